"""The rules file and the rule kinds: validation with one-line reasons, the default file reproducing the
single-pair policy on real data, each kind against an independent computation on the Poloniex file, and
the crossing / cooldown edge cases."""

from __future__ import annotations

import bisect
import json
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from include.glue.price_glue import validation
from include.price_pipeline import rules
from include.price_pipeline.analysis import Price, pct_change
from tests.conftest import utc

T0 = utc(2026, 11, 25, 12, 0)
FIVE = timedelta(minutes=5)


def real_prices(rows, drop_every: int = 0) -> list[Price]:
    """The Poloniex rows as prices; ``drop_every`` removes every n-th row to make gaps."""
    return [
        Price(datetime.fromtimestamp(int(row["date"]), tz=UTC), float(row["weightedAverage"]), "ETH/USDT", "k")
        for index, row in enumerate(rows)
        if not (drop_every and index % drop_every == 3)
    ]


def series(*values: float | None, start: datetime = T0) -> list[Price]:
    """Prices every 5 minutes from ``start``; None leaves that window without a record."""
    return [Price(start + FIVE * i, v, "ETH/USDT", f"k{i}") for i, v in enumerate(values) if v is not None]


def decisions(rule: rules.Rule, prices: list[Price]) -> list[tuple[str, str]]:
    """(decision, direction) of every window that has a record."""
    whole = rules.Series(prices)
    out = []
    for price in whole.prices:
        decided = rules.evaluate(rule, whole, price.slot)
        out.append((decided.decision, decided.direction))
    return out


# --- the default file ---------------------------------------------------------------------------------


def test_default_file_is_todays_single_pair_policy():
    loaded = rules.load(rules.DEFAULT_RULES_FILE)
    assert loaded.default_pair == "ETH/USDT"
    assert loaded.pairs == {
        "ETH/USDT": (
            rules.Rule("move-5m", "change", threshold_pct=1.0, minutes=5, tolerance_minutes=55, min_abs_move=0.0),
        )
    }


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"threshold_pct": 0.5, "repeat_windows": 3},
        {"threshold_pct": 0.3, "lookback_minutes": 10, "min_abs_move": 0.0004, "repeat_windows": 1},
    ],
    ids=["default", "repeat3", "lookback10-minmove"],
)
def test_the_default_pairs_rule_with_dag_params_on_real_data(poloniex_rows, params):
    """The default pair's rule with the DAG params as overrides (its live path) against the single-pair
    contract computed plainly: the previous record within the lookback, a breach above the threshold with
    at least min_abs_move, and repeat_windows as a cooldown of that many windows (gaps made by dropping rows).
    This test compared the engine with ``analysis.classify`` until the one engine replaced it."""
    prices = real_prices(poloniex_rows, drop_every=7)
    rule = rules.with_overrides(rules.load(rules.DEFAULT_RULES_FILE), params).default_rule
    threshold, min_move = params.get("threshold_pct", 1.0), params.get("min_abs_move", 0.0)
    lookback = timedelta(minutes=params.get("lookback_minutes", 60))
    firings, quiet, previous = [], {}, None
    for price in prices:
        if previous is None or price.slot - previous.slot > lookback:
            quiet[price.slot] = "no_previous_record"
        elif abs(price.weighted_average - previous.weighted_average) / previous.weighted_average * 100 <= threshold:
            quiet[price.slot] = "below_threshold"
        elif abs(price.weighted_average - previous.weighted_average) < min_move:
            quiet[price.slot] = "below_min_abs_move"
        else:
            firings.append((price.slot, "up" if price.weighted_average > previous.weighted_average else "down"))
        previous = price
    got = rule_decisions(rule, prices)

    assert_every_window(got, firings, FIVE * params.get("repeat_windows", 0))
    assert {slot: got[slot][0] for slot in quiet} == quiet
    assert len(firings) > 5  # the real data breaches


# --- each kind on real data, against an independent computation ---------------------------------------


def test_change_over_an_hour_on_real_data(poloniex_rows):
    """Reference: the record 60 minutes earlier, else the nearest earlier within 10 minutes of it."""
    rule = rules.Rule("move-1h", "change", threshold_pct=2.0, minutes=60, tolerance_minutes=10)
    prices = real_prices(poloniex_rows, drop_every=5)
    by_epoch = {int(p.slot.timestamp()): p.weighted_average for p in prices}
    expected = []
    for epoch, price in sorted(by_epoch.items()):
        wanted = [epoch - 3600 - 300 * k for k in range(3)]  # 60, 65, 70 minutes back
        reference = next((by_epoch[e] for e in wanted if e in by_epoch), None)
        if reference is None:
            expected.append(("no_previous_record", "flat"))
            continue
        change = (price - reference) / reference * 100
        direction = "up" if change > 0 else "down" if change < 0 else "flat"
        expected.append(("notify" if abs(change) > 2.0 else "below_threshold", direction))
    assert decisions(rule, prices) == expected
    assert expected.count(("notify", "up")) > 3
    assert expected.count(("notify", "down")) > 3


def test_crossing_on_real_data(poloniex_rows):
    """Fires on the windows where the side of the level changes from the previous record (within the
    tolerance), and only there; a price at the level counts as at or above it."""
    prices = real_prices(poloniex_rows, drop_every=9)
    level = sorted(p.weighted_average for p in prices)[len(prices) // 2]
    rule = rules.Rule("cross", "crossing", level=level, direction="both", tolerance_minutes=5)
    expected, previous = [], None
    for price in prices:
        if previous is None or (price.slot - previous.slot) > timedelta(minutes=10):
            expected.append("no_previous_record")
        else:
            before, now = previous.weighted_average >= level, price.weighted_average >= level
            expected.append("notify" if before != now else "not_crossed")
        previous = price
    got = decisions(rule, prices)
    assert [d for d, _ in got] == expected
    ups = [p for p, (d, direction) in zip(prices, got, strict=True) if d == "notify" and direction == "up"]
    assert ups
    assert all(p.weighted_average >= level for p in ups)
    assert 10 < expected.count("notify") < len(prices) // 4

    up_only = rules.Rule("cross-up", "crossing", level=level, direction="up", tolerance_minutes=5)
    assert [d == "notify" for d, _ in decisions(up_only, prices)] == [
        d == "notify" and direction == "up" for d, direction in got
    ]


CHECKPOINT = timedelta(days=1)  # a cooldown under a day: runs are re-anchored at UTC midnights


def reference_cooldown(firings: list[tuple[datetime, str]], cooldown: timedelta) -> dict:
    """``{slot: None (alerts) or the slot it counts from (suppressed)}`` of each firing ``(slot, direction)``,
    forward from the README's definition: a firing alerts unless the rule alerted the same way at most
    ``cooldown`` before it; a run (same direction, each firing at most ``cooldown`` after the previous)
    that began more than a day before a UTC midnight it runs through counts from its last firing before
    that midnight."""
    last_firing, run_start, last_alert, out = {}, {}, {}, {}
    for slot, direction in sorted(firings):
        previous = last_firing.get(direction)
        if previous is None or slot - previous > cooldown:
            run_start[direction] = slot
        else:
            midnight = datetime(slot.year, slot.month, slot.day, tzinfo=UTC)
            if previous < midnight and run_start[direction] < midnight - CHECKPOINT:
                last_alert[direction] = previous
        alerted = last_alert.get(direction)
        if alerted is not None and slot - alerted <= cooldown:
            out[slot] = alerted
        else:
            out[slot], last_alert[direction] = None, slot
        last_firing[direction] = slot
    return out


def change_firings(prices: list[Price], minutes: int, threshold: float) -> list[tuple[datetime, str]]:
    """Plain: the windows whose price moved more than ``threshold`` % from the record ``minutes`` earlier."""
    by_slot = {p.slot: p.weighted_average for p in prices}
    out = []
    for slot, price in sorted(by_slot.items()):
        before = by_slot.get(slot - timedelta(minutes=minutes))
        if before is not None and abs(price - before) / before * 100 > threshold:
            out.append((slot, "up" if price > before else "down"))
    return out


def crossing_firings(prices: list[Price], level: float) -> list[tuple[datetime, str]]:
    """Plain: the windows on the other side of ``level`` than the record 5 minutes earlier."""
    by_slot = {p.slot: p.weighted_average for p in prices}
    out = []
    for slot, price in sorted(by_slot.items()):
        before = by_slot.get(slot - FIVE)
        if before is not None and (before >= level) != (price >= level):
            out.append((slot, "up" if price >= level else "down"))
    return out


def assert_every_window(got: dict, firings: list, cooldown: timedelta) -> dict:
    """``got``: ``{slot: (decision, direction, suppressed_by)}`` of every window. Each firing alerts or is
    suppressed by the window the reference names; no other window alerts or is suppressed."""
    expected = reference_cooldown(firings, cooldown)
    fired = dict(firings)
    for slot, (decision, direction, by) in got.items():
        if slot not in expected:
            assert decision not in ("notify", "suppressed_cooldown", "suppressed_repeat"), slot
            continue
        assert direction == fired[slot], slot
        assert (decision == "notify", by) == (expected[slot] is None, expected[slot]), slot
    return expected


def runs_longer_than_the_cooldown(expected: dict, firings: list, cooldown: timedelta) -> dict:
    """What the data exercises: ``{direction: alerts that came while their run still held}``, and gaps."""
    directions = dict(firings)
    again = {"up": 0, "down": 0}
    for slot, by in expected.items():
        if by is None and any(
            d == directions[slot] and timedelta(0) < slot - s <= cooldown for s, d in firings
        ):  # an alert with a same-direction firing within the cooldown before it: the run went on
            again[directions[slot]] += 1
    return again


def rule_decisions(rule: rules.Rule, prices: list[Price]) -> dict:
    whole = rules.Series(prices)
    out = {}
    for price in whole.prices:
        decided = rules.evaluate(rule, whole, price.slot)
        out[price.slot] = (decided.decision, decided.direction, decided.suppressed_by and decided.suppressed_by.window)
    return out


@pytest.mark.parametrize(
    ("minutes", "threshold", "cooldown"),
    [(5, 0.8, 30), (60, 2.0, 60), (1440, 5.0, 120)],
    ids=["5m-cool30", "1h-cool60", "24h-cool120"],
)
def test_change_cooldown_counts_from_the_last_alert_on_real_data(poloniex_rows, minutes, threshold, cooldown):
    """Every window of the real file against the reference: runs of firings longer than the cooldown alert
    again after each cooldown, a gap longer than the cooldown ends a run, up and down are apart."""
    prices = real_prices(poloniex_rows)
    rule = rules.Rule("move", "change", threshold_pct=threshold, minutes=minutes, cooldown_minutes=cooldown)
    firings = change_firings(prices, minutes, threshold)
    expected = assert_every_window(rule_decisions(rule, prices), firings, timedelta(minutes=cooldown))

    again = runs_longer_than_the_cooldown(expected, firings, timedelta(minutes=cooldown))
    assert again["up"] >= 1  # the old rule suppressed these: their run went on
    assert again["down"] >= 1
    assert any(by is not None for by in expected.values())
    assert sum(by is None for by in expected.values()) > again["up"] + again["down"]  # runs that began anew


def test_crossing_cooldown_counts_from_the_last_alert_on_real_data(poloniex_rows):
    prices = real_prices(poloniex_rows)
    level = sorted(p.weighted_average for p in prices)[len(prices) // 2]
    rule = rules.Rule("cross", "crossing", level=level, cooldown_minutes=240)
    firings = crossing_firings(prices, level)
    expected = assert_every_window(rule_decisions(rule, prices), firings, timedelta(minutes=240))

    again = runs_longer_than_the_cooldown(expected, firings, timedelta(minutes=240))
    assert again["up"] >= 1
    assert again["down"] >= 1
    assert sum(by is not None for by in expected.values()) >= 5


def test_repeat_windows_count_from_the_last_alert_on_real_data(poloniex_rows):
    """The default pair's policy: ``repeat_windows = 6`` is a 30-minute cooldown, as the reference says."""
    prices = real_prices(poloniex_rows)
    rule = rules.with_overrides(rules.load(rules.DEFAULT_RULES_FILE), {"threshold_pct": 0.8, "repeat_windows": 6})
    got = rule_decisions(rule.default_rule, prices)
    firings = change_firings(prices, 5, 0.8)
    expected = assert_every_window(got, firings, timedelta(minutes=30))

    again = runs_longer_than_the_cooldown(expected, firings, timedelta(minutes=30))
    assert again["up"] >= 1
    assert again["down"] >= 1


def test_a_run_longer_than_a_day_counts_from_its_last_firing_before_midnight(poloniex_rows):
    """The bound: a 24-hour change rule on the real file has runs through a midnight more than a day after
    they began; from there the cooldown counts from the run's last firing before midnight."""
    prices = real_prices(poloniex_rows)
    rule = rules.Rule("move", "change", threshold_pct=3.0, minutes=1440, cooldown_minutes=120)
    firings = change_firings(prices, 1440, 3.0)
    got = rule_decisions(rule, prices)
    expected = assert_every_window(got, firings, timedelta(minutes=120))
    whole = rules.Series(prices)
    capped = [s for s in expected if got[s][0] == "suppressed_cooldown"
              and rules.evaluate(rule, whole, s).suppressed_by.checkpoint is not None]  # fmt: skip
    assert capped
    assert "counted from its last firing before that checkpoint" in rules.evaluate(rule, whole, capped[0]).reason


# --- edge cases -----------------------------------------------------------------------------------------


def crossing(direction="both", tolerance=0, level=100.0) -> rules.Rule:
    return rules.Rule("cross", "crossing", level=level, direction=direction, tolerance_minutes=tolerance)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((99, 100), ["no_previous_record", "notify/up"]),  # reaching the level from below crosses it
        ((101, 100), ["no_previous_record", "not_crossed"]),  # touching it from above does not
        ((99, 100, 100, 101), ["no_previous_record", "notify/up", "not_crossed", "not_crossed"]),
        ((101, 100, 99.99), ["no_previous_record", "not_crossed", "notify/down"]),
        ((99, 100, 99), ["no_previous_record", "notify/up", "notify/down"]),  # a touch and back
        ((99, 101, 102, 103), ["no_previous_record", "notify/up", "not_crossed", "not_crossed"]),  # once
        ((99, 99.5, 99.9), ["no_previous_record", "not_crossed", "not_crossed"]),
    ],
)
def test_crossing_at_and_around_the_level(values, expected):
    got = decisions(crossing(), series(*values))
    assert [d if d != "notify" else f"notify/{direction}" for d, direction in got] == expected


def test_crossing_over_a_gap_within_and_beyond_the_tolerance():
    gap = series(99, None, None, 101)  # the record before the crossing is 15 minutes old
    assert decisions(crossing(tolerance=10), gap)[-1] == ("notify", "up")
    assert decisions(crossing(tolerance=5), gap)[-1] == ("no_previous_record", "flat")


def test_crossing_direction_filter():
    prices = series(99, 101, 99)
    assert [d for d, _ in decisions(crossing("up"), prices)] == ["no_previous_record", "notify", "not_crossed"]
    assert [d for d, _ in decisions(crossing("down"), prices)] == ["no_previous_record", "not_crossed", "notify"]


@pytest.mark.parametrize(
    ("cooldown", "expected"),
    [
        (0, ["notify", "notify", "notify"]),
        (5, ["notify", "notify", "notify"]),  # 10 minutes apart: outside
        (10, ["notify", "suppressed_cooldown", "notify"]),  # exactly 10 minutes: inside
        (15, ["notify", "suppressed_cooldown", "notify"]),  # 25 after the alert, 15 after a suppressed one
        (25, ["notify", "suppressed_cooldown", "suppressed_cooldown"]),  # exactly 25 after the alert: inside
    ],
)
def test_cooldown_boundaries(cooldown, expected):
    """Breaches up at 5, 15 and 30 minutes (flat between). The cooldown counts from the last alert on the
    series, not from a suppressed firing (defined on the prices, not on what was sent)."""
    prices = series(100, 102, 102, 104.1, 104.1, 104.1, 106.2)
    rule = rules.Rule("move", "change", threshold_pct=1.0, tolerance_minutes=55, cooldown_minutes=cooldown)
    got = [d for d, _ in decisions(rule, prices)]
    assert got[0] == "no_previous_record"
    assert {got[2], got[4], got[5]} == {"below_threshold"}
    assert [got[1], got[3], got[6]] == expected


def test_cooldown_is_per_direction_and_per_rule_kind():
    prices = series(99, 101, 99, 101)
    rule = rules.Rule("cross", "crossing", level=100.0, cooldown_minutes=15)
    assert [d for d, _ in decisions(rule, prices)] == ["no_previous_record", "notify", "notify", "suppressed_cooldown"]


def test_change_reference_is_never_a_later_record():
    """A 15-minute change compares with the record 15 minutes earlier, not with the one 5 minutes earlier."""
    rule = rules.Rule("m15", "change", threshold_pct=1.0, minutes=15, tolerance_minutes=0)
    assert decisions(rule, series(100, 100, 100, 100.5))[-1] == ("below_threshold", "up")
    assert decisions(rule, series(100, 50, 150, 100.5))[-1] == ("below_threshold", "up")
    assert decisions(rule, series(None, 100, 100, 100.5))[-1] == ("no_previous_record", "flat")
    tolerant = rules.Rule("m15", "change", threshold_pct=1.0, minutes=15, tolerance_minutes=5)
    assert decisions(tolerant, series(97, None, 100, 100, 99))[-1] == ("notify", "up")


def test_min_abs_move_applies_to_both_kinds():
    change = rules.Rule("m", "change", threshold_pct=1.0, tolerance_minutes=55, min_abs_move=3.0)
    assert decisions(change, series(100, 102.5))[-1][0] == "below_min_abs_move"
    assert decisions(change, series(100, 103))[-1][0] == "notify"
    cross = rules.Rule("c", "crossing", level=100.0, min_abs_move=3.0)
    assert decisions(cross, series(99, 101))[-1][0] == "below_min_abs_move"
    assert decisions(cross, series(98, 101))[-1][0] == "notify"


def test_history_covers_everything_a_decision_reads():
    rule = rules.Rule("m", "change", threshold_pct=1.0, minutes=60, tolerance_minutes=10, cooldown_minutes=30)
    assert rule.history == timedelta(days=2, minutes=30 + 60 + 10)  # two segments, the cooldown, the reference
    prices = real_prices([{"date": 1500000000 + 300 * i, "weightedAverage": 100 + (i % 7)} for i in range(100)])
    last = prices[-1].slot
    window = [p for p in prices if p.slot >= last - rule.history]
    assert rules.evaluate(rule, rules.Series(prices), last) == rules.evaluate(rule, rules.Series(window), last)


READ_RULES = (
    rules.Rule("move-5m", "change", threshold_pct=0.5, minutes=5, tolerance_minutes=55),
    rules.Rule("move-1h", "change", threshold_pct=1.0, minutes=60, tolerance_minutes=10, min_abs_move=0.0005),
    rules.Rule("cross", "crossing", level=0.09, tolerance_minutes=55),
    rules.Rule("cool", "change", threshold_pct=0.5, minutes=15, tolerance_minutes=10, cooldown_minutes=30),
    rules.Rule("cool-1h", "change", threshold_pct=1.0, minutes=60, tolerance_minutes=10, cooldown_minutes=60),
)


@pytest.mark.parametrize("rule", READ_RULES, ids=lambda rule: rule.name)
def test_a_decision_over_the_records_it_reads_is_the_decision_over_every_record(poloniex_rows, rule):
    whole = rules.Series(real_prices(poloniex_rows, drop_every=7))  # gaps: references found within tolerances
    for index, price in enumerate(whole.prices):
        back = whole.prices[bisect.bisect_left(whole.slots, price.slot - rule.history) : index + 1]
        read: set = set()
        while (
            wanted := rules.slots_read((rule,), [p.slot for p in back], price.slot, [p for p in back if p.slot in read])
            - read
        ):
            read |= wanted  # a round of reads, as pairs.load_pair_prices does
        reduced = rules.Series([p for p in back if p.slot in read])

        assert rules.evaluate(rule, reduced, price.slot) == rules.evaluate(rule, whole, price.slot)
        if not rule.cooldown_minutes:
            assert len(read) <= 2  # the window's record and its reference: not the whole look-back


# --- validation -------------------------------------------------------------------------------------------


def document(**rule) -> dict:
    base = {"name": "move", "kind": "change", "threshold_pct": 1.0}
    return {"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [{**base, **rule}]}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (document(threshold_pct=-1), "pair ETH/USDT, rule move: threshold_pct must be a finite number >= 0"),
        (document(threshold_pct="1"), "rule move: threshold_pct must be a finite number"),
        (document(threshold_pct=True), "rule move: threshold_pct must be a finite number"),
        ({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [{"name": "move", "kind": "change"}]}},
         "pair ETH/USDT, rule move: threshold_pct is required"),
        (document(minutes=7), "rule move: minutes must be a multiple of 5 from 5 to 1440 (got 7)"),
        (document(minutes=1445), "minutes must be a multiple of 5 from 5 to 1440"),
        (document(minutes=0), "minutes must be a multiple of 5 from 5 to 1440"),
        (document(cooldown_minutes=12), "rule move: cooldown_minutes must be a multiple of 5"),
        (document(tolerance_minutes=-5), "rule move: tolerance_minutes must be whole minutes"),
        (document(kind="crossing", threshold_pct=None), "rule move: unknown field 'threshold_pct' for a crossing"),
        (document(kind="crossing"), "unknown field 'threshold_pct'"),
        (document(kind="spike"), "pair ETH/USDT, rule move: kind must be one of change, crossing (got 'spike')"),
        (document(treshold_pct=1), "rule move: unknown field 'treshold_pct' for a change rule"),
        (document(name="Move 5m"), "pair ETH/USDT, rule 1: name must be"),
        ({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [{"name": "c", "kind": "crossing", "level": 0}]}},
         "pair ETH/USDT, rule c: level must be a finite number > 0"),
        ({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [{"name": "c", "kind": "crossing", "level": 5,
                                                             "direction": "sideways"}]}},
         "rule c: direction must be one of up, down, both"),
        ({"default_pair": "BTC/USDT", "pairs": document()["pairs"]}, "default_pair 'BTC/USDT' must be one of"),
        ({"pairs": document()["pairs"]}, "default_pair None must be one of the pairs"),
        ({"default_pair": "eth/usdt", "pairs": {"eth/usdt": document()["pairs"]["ETH/USDT"]}},
         "pair 'eth/usdt' must be BASE/QUOTE in capitals"),
        ({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": []}}, "pair ETH/USDT: must have a non-empty list"),
        ({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [document()["pairs"]["ETH/USDT"][0]] * 2}},
         "pair ETH/USDT: rule name 'move' is used twice"),
        ({"default_pair": "ETH/USDT", "pairs": {}}, "pairs must be a non-empty object"),
        ({**document(), "pair": "x"}, "unknown field 'pair'"),
        ([], "must be an object"),
    ],
)  # fmt: skip
def test_invalid_rules_are_refused_with_one_line_naming_pair_rule_and_field(doc, message):
    with pytest.raises(rules.RulesError) as refused:
        rules.parse(doc, "r.json")
    assert message in str(refused.value)
    assert str(refused.value).startswith("rules file r.json: ")
    assert "\n" not in str(refused.value)


def test_load_refuses_unreadable_and_non_json_files(tmp_path):
    with pytest.raises(rules.RulesError, match="cannot be read"):
        rules.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{'pairs': 1}")
    with pytest.raises(rules.RulesError, match=r"bad.json: not JSON"):
        rules.load(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(document(minutes=60, tolerance_minutes=10, cooldown_minutes=60)))
    assert rules.load(good).pairs["ETH/USDT"][0].minutes == 60


def test_local_rules_file_has_three_pairs_and_each_kind():
    loaded = rules.load(rules.REPO_ROOT / "include" / "rules" / "local.json")
    assert len(loaded.pairs) == 3
    assert loaded.default_pair == "ETH/USDT"
    every = [rule for pair_rules in loaded.pairs.values() for rule in pair_rules]
    assert {rule.kind for rule in every} == {"change", "crossing"}
    assert any(rule.cooldown_minutes for rule in every)
    assert any(rule.minutes > 5 for rule in every)


def test_params_override_only_the_default_pairs_change_rule():
    loaded = rules.load(rules.REPO_ROOT / "include" / "rules" / "local.json")
    params = {"threshold_pct": 2.5, "lookback_minutes": 30, "min_abs_move": 4, "repeat_windows": 2}
    overridden = rules.with_overrides(loaded, params)
    assert overridden.pairs["ETH/USDT"][0] == rules.Rule(
        "move-5m", "change", threshold_pct=2.5, minutes=5, tolerance_minutes=25, min_abs_move=4.0, cooldown_minutes=10
    )
    assert {p: r for p, r in overridden.pairs.items() if p != "ETH/USDT"} == {
        p: r for p, r in loaded.pairs.items() if p != "ETH/USDT"
    }
    assert rules.with_overrides(loaded, {}) == loaded


def test_params_override_the_change_rule_of_the_pair_and_rule_they_name_and_only_it():
    loaded = rules.load(rules.REPO_ROOT / "include" / "rules" / "local.json")
    [(pair, change)] = [(p, r) for p, rs in loaded.pairs.items() if p != "ETH/USDT" for r in rs if r.kind == "change"][
        :1
    ]
    params = {"pair": pair, "rule": change.name, "threshold_pct": 7.5, "lookback_minutes": None}

    overridden = rules.with_overrides(loaded, params)

    assert [r for r in overridden.pairs[pair] if r.name == change.name] == [replace(change, threshold_pct=7.5)]
    assert {p: rs for p, rs in overridden.pairs.items() if p != pair} == {
        p: rs for p, rs in loaded.pairs.items() if p != pair
    }
    assert rules.with_overrides(loaded, {"pair": pair, "rule": change.name}) == loaded  # nothing to override


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"pair": "DOGE/USDT", "threshold_pct": 2}, "param pair 'DOGE/USDT' is not a pair of the rules file"),
        ({"rule": "nope", "threshold_pct": 2}, "param rule: pair ETH/USDT has no rule 'nope'"),
        ({"pair": "BTC/USDT", "rule": "move-5m"}, "param rule: pair BTC/USDT has no rule 'move-5m'"),
        ({"lookback_minutes": 2000}, "param lookback_minutes 2000: rule move-5m of pair ETH/USDT takes 5 to 1445"),
    ],
)
def test_params_naming_a_pair_or_rule_the_file_has_not_fail_with_one_line(params, reason):
    loaded = rules.load(rules.REPO_ROOT / "include" / "rules" / "local.json")
    with pytest.raises(rules.RulesError, match=re.escape(reason)) as failure:
        rules.with_overrides(loaded, params)
    assert "\n" not in str(failure.value)


def test_params_naming_a_crossing_rule_fail_it_is_no_change_rule():
    doc = {"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [
        {"name": "move-5m", "kind": "change", "threshold_pct": 1.0},
        {"name": "above", "kind": "crossing", "level": 3000.0, "direction": "up"}]}}  # fmt: skip
    with pytest.raises(rules.RulesError, match="pair ETH/USDT has crossing rule 'above'; the params override one"):
        rules.with_overrides(rules.parse(doc), {"rule": "above", "threshold_pct": 2})


def test_make_runs_feed_fires_every_rule_of_the_local_file_within_ten_minutes_whenever_it_starts():
    """local/feed.py's other pairs under include/rules/local.json: from any start, each of their rules
    fires on one of the first two live windows (after the feed's hour of history)."""
    from local.feed import pair_record

    loaded = rules.load(rules.REPO_ROOT / "include" / "rules" / "local.json")
    for start_minute in range(0, 20, 5):
        first_live = T0 + timedelta(minutes=60 + start_minute)
        slots = [first_live - FIVE * i for i in range(12, -2, -1)]
        for pair, pair_rules in loaded.pairs.items():
            if pair == loaded.default_pair:
                continue
            prices = []
            for slot in slots:
                record = pair_record(slot, pair, pair_rules)
                prices.append(Price(slot, record["weightedAverage"], pair, "k"))
            whole = rules.Series(prices)
            for rule in pair_rules:
                fired = [rules.evaluate(rule, whole, slot).decision for slot in slots[-2:]]
                assert "notify" in fired, (pair, rule.name, start_minute)


# --- the exchange feed's sources (``feed``) ------------------------------------------------------------

TWO_PAIRS = {
    "default_pair": "ETH/USDT",
    "pairs": {
        "ETH/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 1, "minutes": 5, "tolerance_minutes": 0}],
        "SOL/USDT": [{"name": "cross-150", "kind": "crossing", "level": 150, "tolerance_minutes": 0}],
    },
}


def test_without_a_feed_every_pair_comes_from_binance_with_volumes():
    assert rules.parse(TWO_PAIRS).feed == {"ETH/USDT": rules.Source(), "SOL/USDT": rules.Source()}
    assert rules.Source() == rules.Source("binance", "volumes")


def test_a_pair_takes_its_own_exchange_and_the_others_the_files():
    feed = {"exchange": "binanceus", "pairs": {"SOL/USDT": {"exchange": "kraken", "weighted_average": "typical_price"}}}
    assert rules.parse({**TWO_PAIRS, "feed": feed}).feed == {
        "ETH/USDT": rules.Source("binanceus", "volumes"),
        "SOL/USDT": rules.Source("kraken", "typical_price"),
    }


def test_an_exchange_without_quote_volume_is_refused_unless_the_pair_opts_into_typical_price():
    with pytest.raises(rules.RulesError) as refused:
        rules.parse({**TWO_PAIRS, "feed": {"pairs": {"SOL/USDT": {"exchange": "kraken"}}}}, "r.json")
    assert str(refused.value) == (
        "rules file r.json: feed.pairs SOL/USDT: kraken's candles carry no quote volume to derive weightedAverage "
        "from (only binance, binanceus' do); set weighted_average to typical_price to accept (high + low + close) / 3 "
        "instead"
    )


@pytest.mark.parametrize(
    ("feed", "reason"),
    [
        ({"exchange": "Binance!"}, "feed: exchange 'Binance!' is not valid"),
        ({"pairs": {"DOGE/USDT": {}}}, "feed.pairs must be an object of configured pairs (got ['DOGE/USDT'])"),
        (
            {"pairs": {"SOL/USDT": {"weighted_average": "close"}}},
            "feed.pairs SOL/USDT: weighted_average 'close' is not valid",
        ),
        ({"url": "http://x"}, "feed must be an object of exchange and pairs"),
    ],
)
def test_a_bad_feed_fails_the_parse_with_one_line(feed, reason):
    with pytest.raises(rules.RulesError, match="^rules file r.json: " + re.escape(reason) + "$"):
        rules.parse({**TWO_PAIRS, "feed": feed}, "r.json")


# --- issue 35: refused with one line, not a crash or a silent last-wins ---------------------------------

HUGE = "1" * 400  # a JSON integer no float holds: math.isfinite raised OverflowError on it


def rule_text(kind: str = "change", **fields: str) -> str:
    """One rule as JSON text (each field's value is JSON text, so a number stays as written)."""
    name = "m" if kind == "change" else "c"
    return "".join(['{"name": "', name, '", "kind": "', kind, '"', *(f', "{k}": {v}' for k, v in fields.items()), "}"])


def rules_text(rule: str, feed: str = "") -> str:
    """A rules file's text with ``rule`` the default pair's one rule, and ``feed`` (JSON text) if given."""
    feed = f', "feed": {feed}' if feed else ""
    return "".join(['{"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [', rule, "]}", feed, "}"])


def refused_line(tmp_path, text: str) -> str:
    """The one line ``rules.load`` refuses ``text`` with."""
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(rules.RulesError) as refused:
        rules.load(path)
    line = str(refused.value)
    assert line.startswith(f"rules file {path}: ")
    assert "\n" not in line
    assert len(line) < 400
    return line


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (rule_text(threshold_pct=HUGE), "rule m: threshold_pct must be a finite number"),
        (rule_text(threshold_pct="1", min_abs_move=HUGE), "rule m: min_abs_move must be a finite number"),
        (rule_text("crossing", level=HUGE), "rule c: level must be a finite number"),
        (rule_text("crossing", level="-" + HUGE), "rule c: level must be a finite number"),
        (rule_text("crossing", level="1e400"), "rule c: level must be a finite number"),
        (rule_text(threshold_pct="1", min_abs_move="1e400"), "rule m: min_abs_move must be a finite number"),
        (rule_text(threshold_pct="1", minutes=HUGE), "rule m: minutes must be a multiple of 5"),
        (rule_text("crossing", level="1e11"), "rule c: level must be a finite number > 0 and at most 1e+10"),
        (rule_text(threshold_pct="1", min_abs_move="2e10"), "rule m: min_abs_move must be a finite number >= 0 and"),
        (rule_text(threshold_pct="1e23"), "rule m: threshold_pct must be a finite number >= 0 and at most 1e+22"),
        (rule_text(threshold_pct="1" * 5000), "not JSON"),
    ],
    ids=["threshold-int", "min-move-int", "level-int", "level-negative-int", "level-1e400", "min-move-1e400",
         "minutes-int", "level-above-any-price", "min-move-above-any-price", "threshold-above-any-change",
         "beyond-pythons-int-digits"],
)  # fmt: skip
def test_a_huge_number_is_refused_with_one_line(tmp_path, rule, message):
    assert message in refused_line(tmp_path, rules_text(rule))


def test_the_bounds_accept_every_price_the_glue_job_accepts():
    """A level or a min_abs_move up to the job's largest price, a threshold up to the largest change two of
    its prices can make: anything above could never fire (the bounds are the job's, copied: it runs alone)."""
    assert (rules.MIN_PRICE, rules.MAX_PRICE) == (validation.MIN_PRICE, validation.MAX_PRICE)
    top = validation.MAX_PRICE
    doc = {"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [
        {"name": "m", "kind": "change", "threshold_pct": rules.MAX_THRESHOLD_PCT, "min_abs_move": top},
        {"name": "c", "kind": "crossing", "level": top, "min_abs_move": top}]}}  # fmt: skip
    assert rules.parse(doc).pairs["ETH/USDT"][1].level == top
    changed = pct_change(validation.MIN_PRICE, top)
    assert changed <= rules.MAX_THRESHOLD_PCT < 10 * changed


def test_a_deeply_nested_file_is_refused_as_not_json_with_one_line(tmp_path):
    assert "not JSON it can read (nested too deeply)" in refused_line(tmp_path, "[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [{"name": "m", "kind": "change", "threshold_pct": 1}],'
         ' "ETH/USDT": [{"name": "m", "kind": "change", "threshold_pct": 5}]}}', "ETH/USDT"),
        (rules_text('{"name": "m", "kind": "change", "threshold_pct": 1, "threshold_pct": 9}'), "threshold_pct"),
        ('{"default_pair": "ETH/USDT", "default_pair": "ETH/USDT", "pairs": {"ETH/USDT": '
         '[{"name": "m", "kind": "change", "threshold_pct": 1}]}}', "default_pair"),
        (rules_text(rule_text(threshold_pct="1"), '{"exchange": "binance", "exchange": "binanceus"}'), "exchange"),
    ],
    ids=["pair", "rule-field", "top-level", "feed"],
)  # fmt: skip
def test_a_key_repeated_in_one_object_is_refused_naming_it(tmp_path, text, key):
    """json keeps the last of two equal keys: the first pair's rules, or a rule's first threshold, were
    silently dropped."""
    assert f"key {key!r} appears twice in one object" in refused_line(tmp_path, text)


@pytest.mark.parametrize(
    "feed",
    [
        '{"exchange": "krakenx", "pairs": {"ETH/USDT": {"weighted_average": "typical_price"}}}',
        '{"pairs": {"ETH/USDT": {"exchange": "krakenx", "weighted_average": "typical_price"}}}',
    ],
    ids=["feed", "pair"],
)
def test_an_exchange_ccxt_does_not_know_is_refused_when_the_file_is_parsed(tmp_path, feed):
    line = refused_line(tmp_path, rules_text(rule_text(threshold_pct="1"), feed))
    assert "exchange 'krakenx' is not one ccxt knows" in line


def test_checking_the_exchanges_does_not_import_ccxt():
    """The DAGs parse the rules file each time they are parsed: ccxt (a second of imports) is not for that."""
    code = (
        "import sys; from include.price_pipeline import rules; "
        "feed = {'pairs': {'SOL/USDT': {'exchange': 'kraken', 'weighted_average': 'typical_price'}}}; "
        f"assert rules.parse({{**{TWO_PAIRS!r}, 'feed': feed}}).feed['SOL/USDT'].exchange == 'kraken'; "
        "assert 'ccxt' not in sys.modules, 'ccxt imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=rules.REPO_ROOT, check=True, timeout=60)


def test_a_pickled_rule_carries_its_fields_not_its_cached_hash():
    """Issue 37 caches a rule's hash (the engine keys 105,120 decisions a year by rule): the cache must not
    travel to another process, where a string's hash differs."""
    import pickle

    rule = rules.load(rules.DEFAULT_RULES_FILE).default_rule
    assert {rule: 1}[replace(rule)] == 1  # equal rules, one hash, cached or not
    code = (
        "import pickle, sys; from include.price_pipeline import rules; "
        "rule = pickle.loads(sys.stdin.buffer.read()); "
        "assert {rules.load(rules.DEFAULT_RULES_FILE).default_rule: 1}[rule] == 1"
    )
    subprocess.run([sys.executable, "-c", code], input=pickle.dumps(rule), cwd=rules.REPO_ROOT, check=True, timeout=60)
