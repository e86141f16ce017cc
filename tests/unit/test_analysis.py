"""The default pair's rule as the DAG params set it (``rules.with_overrides``), decided by the rules engine
as every pair's are; the freshness rule; the canonical CSV.

These tests were the single-pair engine's (``analysis.classify``); the one engine keeps every behaviour
they pinned: the previous record within the lookback, the threshold and min_abs_move boundaries, and the
repeat-window cooldown (now ``suppressed_cooldown``, its reason naming the cooldown in minutes)."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.glue.price_glue import validation
from include.price_pipeline import analysis, layout, rules
from include.price_pipeline.analysis import Price
from tests.conftest import utc
from tests.records import candle

T0 = utc(2026, 2, 3, 12, 0)
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())
DEFAULT_RULES = rules.load(rules.DEFAULT_RULES_FILE)


def at(windows: int) -> object:
    """The slot ``windows`` five-minute windows after T0."""
    return T0 + layout.SLOT * windows


def price(windows: int, weighted_average: float, pair: str = "ETH/USDT") -> Price:
    slot = at(windows)
    return Price(slot, weighted_average, pair, layout.ingestion_key(slot, ".json", pair="ETH/USDT"))


def rule(**params) -> rules.Rule:
    """The default pair's rule with these DAG params (threshold_pct, lookback_minutes, min_abs_move,
    repeat_windows), as a run of price_notification decides with it."""
    return rules.with_overrides(DEFAULT_RULES, params).default_rule


def decided(prices: list[Price], the_rule: rules.Rule, window: int | None = None) -> rules.Decision:
    """The rule's decision of the last window of ``prices`` (or of ``window``)."""
    series = rules.Series(prices)
    return rules.evaluate(the_rule, series, series.slots[-1] if window is None else at(window))


def decisions(prices: list[Price], the_rule: rules.Rule) -> list[str]:
    """The decision of every window of a series, as the DAG reaches it for each one."""
    series = rules.Series(prices)
    return [rules.evaluate(the_rule, series, slot).decision for slot in series.slots]


def change_of(previous: float, latest: float, gap_windows: int = 1, **params) -> rules.Decision:
    return decided([price(0, previous), price(gap_windows, latest)], rule(**params))


# ------------------------------------------------------------------ the previous record


def test_the_dag_params_set_the_default_pairs_rule():
    assert rule() == DEFAULT_RULES.default_rule
    assert rule(threshold_pct=2.5, lookback_minutes=30, min_abs_move=1.5, repeat_windows=3) == rules.Rule(
        "move-5m", rules.CHANGE, threshold_pct=2.5, minutes=5, tolerance_minutes=25, min_abs_move=1.5,
        cooldown_minutes=15,
    )  # fmt: skip


def test_first_price_of_a_series_has_no_previous():
    first = decided([price(0, 100.0)], rule())

    assert (first.reference, first.change_pct, first.decision) == (None, None, analysis.NO_PREVIOUS)


def test_each_price_is_compared_with_the_one_before_it():
    prices = [price(0, 100.0), price(1, 102.0), price(2, 96.9)]
    series = rules.Series(prices)

    changes = [rules.evaluate(rule(), series, p.slot) for p in prices]

    assert [c.reference for c in changes] == [None, prices[0], prices[1]]
    assert changes[1].change_pct == pytest.approx(2.0)
    assert changes[2].change_pct == pytest.approx(-5.0)


def test_previous_record_exactly_at_the_lookback_boundary_counts():
    earlier, latest = price(0, 100.0), price(12, 103.0)  # 60 minutes apart

    change = decided([earlier, latest], rule(lookback_minutes=60))

    assert change.reference == earlier
    assert change.change_pct == pytest.approx(3.0)


def test_previous_record_beyond_the_lookback_gives_no_previous():
    change = decided([price(0, 100.0), price(13, 103.0)], rule(lookback_minutes=60))  # 65 minutes apart

    assert (change.reference, change.change_pct) == (None, None)


def test_a_gap_breaks_the_chain_and_the_next_record_compares_with_the_one_after_the_gap():
    prices = [price(0, 100.0), price(20, 110.0), price(21, 111.1)]
    series = rules.Series(prices)

    changes = [rules.evaluate(rule(lookback_minutes=30), series, p.slot) for p in prices]

    assert [c.reference for c in changes] == [None, None, prices[1]]
    assert changes[2].change_pct == pytest.approx(1.0)


# ------------------------------------------------------------------ pct_change and direction


def test_pct_change_is_positive_for_a_rise_and_negative_for_a_fall():
    assert analysis.pct_change(200.0, 250.0) == pytest.approx(25.0)
    assert analysis.pct_change(200.0, 150.0) == pytest.approx(-25.0)
    assert analysis.pct_change(200.0, 200.0) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    previous=st.floats(min_value=1e-6, max_value=1e9),
    latest=st.floats(min_value=1e-6, max_value=1e9),
)
def test_pct_change_sign_follows_the_move(previous, latest):
    change = analysis.pct_change(previous, latest)

    assert (change > 0) == (latest > previous)
    assert (change < 0) == (latest < previous)
    # latest = previous * (1 + change/100), up to rounding of the larger of the two
    assert previous * (1 + change / 100) == pytest.approx(latest, rel=1e-9, abs=1e-9 * max(previous, latest))


@pytest.mark.parametrize(("latest", "direction"), [(101.0, "up"), (99.0, "down"), (100.0, "flat")])
def test_change_direction(latest, direction):
    assert change_of(100.0, latest).direction == direction


# ------------------------------------------------------------------ threshold and min_abs_move


def test_a_move_exactly_at_the_threshold_is_not_a_breach():
    change = change_of(100.0, 101.5, threshold_pct=1.5)

    assert change.change_pct == 1.5
    assert change.decision == analysis.BELOW_THRESHOLD == "below_threshold"
    assert "threshold 1.5%" in change.reason


@pytest.mark.parametrize("latest", [101.6, 98.4], ids=["up", "down"])
def test_a_move_strictly_above_the_threshold_is_a_breach_in_either_direction(latest):
    assert change_of(100.0, latest, threshold_pct=1.5).decision == analysis.NOTIFY


def test_a_window_without_a_previous_record_is_never_a_breach():
    first = decided([price(0, 100.0)], rule(threshold_pct=0.0, lookback_minutes=45))

    assert first.decision == analysis.NO_PREVIOUS == "no_previous_record"
    assert "5 to 45 minutes earlier" in first.reason


def test_min_abs_move_requires_a_move_of_at_least_that_many_price_units():
    # 2 %, 2.0 price units
    assert change_of(100.0, 102.0, threshold_pct=1.0, min_abs_move=0.0).decision == analysis.NOTIFY
    assert change_of(100.0, 102.0, threshold_pct=1.0, min_abs_move=2.0).decision == analysis.NOTIFY
    below = change_of(100.0, 102.0, threshold_pct=1.0, min_abs_move=2.5)
    assert below.decision == analysis.BELOW_MIN_MOVE == "below_min_abs_move"
    assert "min_abs_move 2.5" in below.reason


def test_min_abs_move_applies_to_falls_too():
    # -10 %, 1.0 price unit
    assert change_of(10.0, 9.0, threshold_pct=1.0, min_abs_move=1.5).decision == analysis.BELOW_MIN_MOVE
    assert change_of(10.0, 9.0, threshold_pct=1.0, min_abs_move=0.5).decision == analysis.NOTIFY


def test_a_breach_notifies_with_its_change_in_the_reason():
    change = change_of(100.0, 97.0, threshold_pct=1.0)

    assert change.decision == analysis.NOTIFY == "notify"
    assert "3.0000%" in change.reason


# ------------------------------------------------------------------ repeat windows: the cooldown


def test_without_repeat_windows_every_breach_of_a_continuing_move_notifies():
    prices = [price(0, 100.0), price(1, 102.0), price(2, 104.1), price(3, 106.3)]

    assert decisions(prices, rule(threshold_pct=1.0)) == ["no_previous_record", "notify", "notify", "notify"]


def test_repeat_windows_suppresses_a_same_direction_breach_right_after_an_alert_and_alerts_again_after():
    prices = [price(0, 100.0), price(1, 102.0), price(2, 104.1), price(3, 106.3)]

    assert decisions(prices, rule(threshold_pct=1.0, repeat_windows=1)) == [
        "no_previous_record",
        "notify",
        "suppressed_cooldown",  # one window after the alert
        "notify",  # two windows after the alert: the move still holds, so it alerts again
    ]


def test_repeat_windows_never_suppresses_a_breach_in_the_opposite_direction():
    prices = [price(0, 100.0), price(1, 102.0), price(2, 99.0)]

    assert decisions(prices, rule(threshold_pct=1.0, repeat_windows=3)) == ["no_previous_record", "notify", "notify"]


def test_repeat_windows_counts_an_earlier_breach_exactly_n_windows_back_and_not_one_more():
    # Up breach at window 1, calm windows, then another up breach at window 4: three windows later.
    prices = [price(0, 100.0), price(1, 102.0), price(2, 102.1), price(3, 102.2), price(4, 104.5)]

    assert decisions(prices, rule(threshold_pct=1.0, repeat_windows=3))[-1] == "suppressed_cooldown"
    assert decisions(prices, rule(threshold_pct=1.0, repeat_windows=2))[-1] == "notify"


def test_repeat_windows_ignores_earlier_moves_that_were_not_breaches():
    prices = [price(0, 100.0), price(1, 100.5), price(2, 101.0), price(3, 103.0)]

    assert decisions(prices, rule(threshold_pct=1.0, repeat_windows=3))[-1] == "notify"


def test_a_suppressed_breach_names_the_direction_the_alert_window_and_the_cooldown():
    prices = [price(0, 100.0), price(1, 97.0), price(2, 94.0)]

    change = decided(prices, rule(threshold_pct=1.0, repeat_windows=2))

    assert change.decision == analysis.SUPPRESSED_COOLDOWN == "suppressed_cooldown"
    assert change.reason == "alerted down at 20260203T1205Z, within the 10-minute cooldown"
    assert change.suppressed_by.window == at(1)


def test_a_window_gets_the_same_decision_whatever_order_the_series_was_read_in():
    prices = [price(n, 100.0 * (1.02 if n % 3 else 0.99) ** n) for n in range(12)]
    shuffled = prices[:]
    random.Random(11).shuffle(shuffled)
    the_rule = rule(threshold_pct=1.0, repeat_windows=2)

    assert decisions(shuffled, the_rule) == decisions(prices, the_rule)


# ------------------------------------------------------------------ freshness


def test_apply_freshness_turns_a_notify_that_is_not_due_into_suppressed_backfill():
    assert analysis.apply_freshness("notify", "big move", False, "backfill run") == (
        analysis.SUPPRESSED_BACKFILL,
        "backfill run",
    )


def test_apply_freshness_keeps_a_due_notify():
    assert analysis.apply_freshness("notify", "big move", True, "") == ("notify", "big move")


@pytest.mark.parametrize(
    "decision", ["no_previous_record", "below_threshold", "below_min_abs_move", "suppressed_repeat"]
)
def test_apply_freshness_leaves_every_other_decision_alone(decision):
    assert analysis.apply_freshness(decision, "why", False, "old window") == (decision, "why")


NOW = utc(2026, 2, 3, 12, 7)


def test_a_backfill_run_is_not_due_even_for_a_recent_window():
    due, why = analysis.due_for_subscribers("backfill", NOW - timedelta(minutes=2), NOW, 15, False)

    assert not due
    assert "backfill" in why
    assert "notify_on_backfill" in why


def test_a_window_that_ended_longer_ago_than_max_alert_age_is_not_due():
    due, why = analysis.due_for_subscribers("scheduled", NOW - timedelta(minutes=16), NOW, 15, False)

    assert not due
    assert "max_alert_age" in why
    assert "15 min" in why


def test_a_window_that_ended_exactly_max_alert_age_ago_is_still_due():
    assert analysis.due_for_subscribers("scheduled", NOW - timedelta(minutes=15), NOW, 15, False) == (True, "")


@pytest.mark.parametrize("run_type", ["scheduled", "manual", "asset_triggered"])
def test_a_recent_window_of_a_live_run_is_due(run_type):
    assert analysis.due_for_subscribers(run_type, NOW - timedelta(minutes=2), NOW, 15, False) == (True, "")


@pytest.mark.parametrize(
    ("run_type", "ended_minutes_ago"),
    [("backfill", 2), ("scheduled", 60 * 24 * 365), ("backfill", 60 * 24 * 365)],
)
def test_notify_on_backfill_makes_any_window_due(run_type, ended_minutes_ago):
    window_end = NOW - timedelta(minutes=ended_minutes_ago)

    assert analysis.due_for_subscribers(run_type, window_end, NOW, 15, True) == (True, "")


def test_why_not_due_holds_no_wall_clock_value_so_re_runs_write_the_same_ledger():
    window_end = utc(2026, 1, 1, 0, 5)

    reasons = {
        analysis.due_for_subscribers("scheduled", window_end, window_end + timedelta(days=d), 15, False)
        for d in (1, 30, 400)
    }

    assert len(reasons) == 1


# ------------------------------------------------------------------ parse_canonical_csv


def glue_csv(record: dict, source_key: str, pair: str = "ETH/USDT", source_format: str = "json") -> bytes:
    """The canonical CSV the Glue job writes for ``record``, through its own functions."""
    return validation.to_csv(validation.normalize(record, ALIASES, pair, source_key, source_format))


def test_parse_canonical_csv_reads_what_the_glue_job_writes():
    slot = utc(2026, 2, 3, 12, 0)
    key = layout.ingestion_key(slot, ".json", pair="ETH/USDT")

    parsed = analysis.parse_canonical_csv(glue_csv(candle(slot, 3120.55), key))

    assert parsed == Price(slot=slot, weighted_average=3120.55, pair="ETH/USDT", source_key=key)
    assert parsed.slot.utcoffset() == timedelta(0)


def test_parse_canonical_csv_keeps_a_source_key_with_commas_and_quotes():
    slot = utc(2026, 2, 3, 12, 5)
    key = layout.ingestion_key(slot, '-"producer, b".csv', pair="ETH/USDT")

    assert analysis.parse_canonical_csv(glue_csv(candle(slot, 100.0), key)).source_key == key


@settings(max_examples=100, deadline=None)
@given(
    windows=st.integers(min_value=0, max_value=12 * 24 * 365 * 5),
    weighted_average=st.floats(min_value=1e-8, max_value=1e9),
    pair=st.sampled_from(["ETH/USDT", "BTC_ETH", "eth-usd"]),
)
def test_parse_canonical_csv_round_trips_any_normalized_record_exactly(windows, weighted_average, pair):
    slot = at(windows)
    record = {**candle(slot, weighted_average), "pair": pair}
    record.update(high=weighted_average, low=weighted_average)
    key = layout.ingestion_key(slot, ".json", pair="ETH/USDT")

    parsed = analysis.parse_canonical_csv(glue_csv(record, key, pair))

    assert parsed == Price(slot, weighted_average, pair, key)


def test_parse_canonical_csv_rejects_a_header_without_rows():
    body = glue_csv(candle(T0, 100.0), "k").splitlines(keepends=True)[0]

    with pytest.raises(ValueError, match="exactly one row, found 0"):
        analysis.parse_canonical_csv(body)


def test_parse_canonical_csv_rejects_two_rows():
    header, row = glue_csv(candle(T0, 100.0), "k").splitlines(keepends=True)

    with pytest.raises(ValueError, match="exactly one row, found 2"):
        analysis.parse_canonical_csv(header + row + row)


def test_parse_canonical_csv_rejects_a_missing_column():
    header, row = glue_csv(candle(T0, 100.0), "k").decode().splitlines()
    columns, cells = header.split(","), row.split(",")
    drop = columns.index("source_format")
    body = ",".join(columns[:drop] + columns[drop + 1 :]) + "\n" + ",".join(cells[:drop] + cells[drop + 1 :]) + "\n"

    with pytest.raises(ValueError, match="source_format"):
        analysis.parse_canonical_csv(body.encode())
