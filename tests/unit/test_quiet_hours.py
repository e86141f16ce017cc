"""Quiet hours per rule (issue 39): a firing whose window starts inside the rule's local quiet hours is
recorded as ``suppressed_quiet_hours`` with its reason and never sent, unless its |change| is above
``unless_pct``; the hours are the zone's wall clock, so daylight saving moves them in UTC."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from include.price_pipeline import ledger, rules
from include.price_pipeline.analysis import Price
from tests.conftest import utc

FIVE = timedelta(minutes=5)
BERLIN_NIGHTS = {"from": "23:00", "to": "07:00", "time_zone": "Europe/Berlin"}


def rule(quiet: dict | None = BERLIN_NIGHTS, **fields) -> rules.Rule:
    raw = {"name": "move", "kind": "change", "threshold_pct": 1.0, **fields}
    if quiet is not None:
        raw["quiet_hours"] = quiet
    document = {"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [raw]}}
    return rules.parse(document).pairs["ETH/USDT"][0]


def decided(a_rule: rules.Rule, slot, change_pct: float = 2.0) -> rules.Decision:
    """The rule's decision at ``slot`` when the price moved ``change_pct`` since the window before."""
    prices = [Price(slot - FIVE, 100.0, "ETH/USDT", "a"), Price(slot, 100.0 * (1 + change_pct / 100), "ETH/USDT", "b")]
    return rules.evaluate(a_rule, rules.Series(prices), slot)


@pytest.mark.parametrize(
    ("slot", "held"),
    [
        # Winter (CET, UTC+1): 23:00-07:00 Berlin is 22:00-06:00 UTC.
        (utc(2026, 1, 15, 12, 0), False),  # outside
        (utc(2026, 1, 15, 2, 0), True),  # inside
        (utc(2026, 1, 15, 21, 55), False),  # 22:55 Berlin: the window before the start
        (utc(2026, 1, 15, 22, 0), True),  # 23:00 Berlin: the start edge is inside
        (utc(2026, 1, 16, 5, 55), True),  # 06:55 Berlin: the last quiet window
        (utc(2026, 1, 16, 6, 0), False),  # 07:00 Berlin: the end edge is outside
        # Spring forward, 2026-03-29 01:00 UTC (02:00 CET -> 03:00 CEST): the night ends at 05:00 UTC.
        (utc(2026, 3, 28, 21, 55), False),  # 22:55 CET
        (utc(2026, 3, 28, 22, 0), True),  # 23:00 CET
        (utc(2026, 3, 29, 0, 55), True),  # 01:55 CET, the last window before the change
        (utc(2026, 3, 29, 1, 0), True),  # 03:00 CEST, the first after it
        (utc(2026, 3, 29, 4, 55), True),  # 06:55 CEST
        (utc(2026, 3, 29, 5, 0), False),  # 07:00 CEST: an hour earlier in UTC than the night before
        (utc(2026, 3, 29, 21, 0), True),  # 23:00 CEST: the next night starts an hour earlier in UTC
        # Fall back, 2026-10-25 01:00 UTC (03:00 CEST -> 02:00 CET): the night ends at 06:00 UTC.
        (utc(2026, 10, 24, 20, 55), False),  # 22:55 CEST
        (utc(2026, 10, 24, 21, 0), True),  # 23:00 CEST
        (utc(2026, 10, 25, 0, 30), True),  # 02:30 CEST, the first of the two 02:30s
        (utc(2026, 10, 25, 1, 30), True),  # 02:30 CET, the second
        (utc(2026, 10, 25, 5, 0), True),  # 06:00 CET: it was 07:00 CEST a day earlier, outside
        (utc(2026, 10, 25, 5, 55), True),  # 06:55 CET
        (utc(2026, 10, 25, 6, 0), False),  # 07:00 CET
    ],
)
def test_a_firing_is_held_exactly_when_its_window_starts_in_the_zones_quiet_hours(slot, held):
    decision = decided(rule(), slot)

    assert decision.decision == (rules.SUPPRESSED_QUIET_HOURS if held else rules.NOTIFY)
    if held:
        local = slot.astimezone(ZoneInfo("Europe/Berlin"))
        assert decision.reason.startswith(
            f"quiet hours 23:00-07:00 Europe/Berlin (the window starts {local:%H:%M} there): |change| 2.0000%"
        )


def test_quiet_hours_within_one_day_and_a_rule_without_any():
    lunch = rule({"from": "12:00", "to": "13:30", "time_zone": "UTC"})

    assert decided(lunch, utc(2026, 1, 15, 11, 55)).decision == rules.NOTIFY
    assert decided(lunch, utc(2026, 1, 15, 12, 0)).decision == rules.SUPPRESSED_QUIET_HOURS
    assert decided(lunch, utc(2026, 1, 15, 13, 25)).decision == rules.SUPPRESSED_QUIET_HOURS
    assert decided(lunch, utc(2026, 1, 15, 13, 30)).decision == rules.NOTIFY
    assert decided(rule(None), utc(2026, 1, 15, 2, 0)).decision == rules.NOTIFY


def test_a_move_above_unless_pct_is_sent_in_quiet_hours_and_one_at_it_is_held():
    big_only = rule({**BERLIN_NIGHTS, "unless_pct": 5})
    night = utc(2026, 1, 15, 2, 0)

    sent = decided(big_only, night, change_pct=6.0)
    held = decided(big_only, night, change_pct=5.0)

    assert sent.decision == rules.NOTIFY
    assert sent.reason.endswith("sent in quiet hours 23:00-07:00 Europe/Berlin (the window starts 03:00 there): "
                                "|change| above 5%")  # fmt: skip
    assert held.decision == rules.SUPPRESSED_QUIET_HOURS
    assert ", |change| <= unless_pct 5%: |change| 5.0000%" in held.reason
    assert decided(big_only, night, change_pct=-6.0).decision == rules.NOTIFY


def test_a_held_firing_counts_for_the_cooldown_so_it_is_never_sent_later_by_surprise():
    """The move held at 06:55 goes on at 07:00: the cooldown counts the held firing, so nothing is sent."""
    cooled = rule(BERLIN_NIGHTS, cooldown_minutes=30)
    start = utc(2026, 1, 16, 5, 50)  # 06:50 Berlin
    prices = [Price(start + FIVE * i, 100.0 * 1.02**i, "ETH/USDT", f"k{i}") for i in range(4)]
    series = rules.Series(prices)

    verdicts = [rules.evaluate(cooled, series, price.slot).decision for price in prices[1:]]

    assert verdicts == [rules.SUPPRESSED_QUIET_HOURS, rules.SUPPRESSED_COOLDOWN, rules.SUPPRESSED_COOLDOWN]


def test_the_ledger_records_a_held_firing_as_decided_and_claims_nothing():
    slot = utc(2026, 1, 15, 2, 0)
    prices = rules.Series([Price(slot - FIVE, 100.0, "ETH/USDT", "a"), Price(slot, 103.0, "ETH/USDT", "b")])

    entry = ledger.decide("ETH/USDT", (rule(),), prices, slot, True, "", "price_notification/run")

    assert entry["decision"] == ledger.ANALYSED
    assert "claimed_by" not in entry
    assert entry["rules"]["move"]["decision"] == rules.SUPPRESSED_QUIET_HOURS
    assert ledger.due_alerts(entry, "") == []


@pytest.mark.parametrize(
    ("quiet", "complaint"),
    [
        ("23:00-07:00", "quiet_hours: must be an object of from, to, time_zone and optionally unless_pct"),
        ({**BERLIN_NIGHTS, "days": "mon"}, "quiet_hours: must be an object of from, to, time_zone"),
        ({**BERLIN_NIGHTS, "from": "24:00"}, "quiet_hours: from must be HH:MM, 00:00 to 23:59 (got '24:00')"),
        ({**BERLIN_NIGHTS, "to": "7:00"}, "quiet_hours: to must be HH:MM, 00:00 to 23:59 (got '7:00')"),
        ({**BERLIN_NIGHTS, "to": "23:00"}, "quiet_hours: from and to are the same time"),
        ({**BERLIN_NIGHTS, "time_zone": "Mars/Olympus"}, "quiet_hours: time_zone must be an IANA time zone"),
        ({**BERLIN_NIGHTS, "time_zone": "../../etc/passwd"}, "quiet_hours: time_zone must be an IANA time zone"),
        ({**BERLIN_NIGHTS, "time_zone": None}, "quiet_hours: time_zone must be an IANA time zone"),
        ({**BERLIN_NIGHTS, "unless_pct": -1}, "quiet_hours: unless_pct must be a finite number >= 0"),
        ({**BERLIN_NIGHTS, "unless_pct": True}, "quiet_hours: unless_pct must be a finite number >= 0"),
    ],
)
def test_quiet_hours_the_file_cannot_mean_are_refused_with_one_line(quiet, complaint):
    with pytest.raises(rules.RulesError) as refused:
        rule(quiet)

    assert "pair ETH/USDT, rule move: " + complaint in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_crossing_rule_takes_quiet_hours_too():
    raw = {"name": "cross", "kind": "crossing", "level": 101, "quiet_hours": BERLIN_NIGHTS}
    crossing = rules.parse({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [raw]}}).pairs["ETH/USDT"][0]

    assert decided(crossing, utc(2026, 1, 15, 2, 0)).decision == rules.SUPPRESSED_QUIET_HOURS
    assert decided(crossing, utc(2026, 1, 15, 12, 0)).decision == rules.NOTIFY
