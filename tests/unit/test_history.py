"""Bulk history analysis: every pair's windows in one pass leave the ledger the live DAG's per-window
analysis leaves, with a summary of it; deterministic Parquet; ledger writes that never overwrite a claimed
or notified entry; the Glue job's range listing; a window waiting for earlier normalizations; ops' report
of a range's quarantined objects.

The per-window reference is ``ledger.analyse_pairs`` itself (what every price_notification run does), run
for each window on an in-memory S3; the bulk side is ``history.backfill_history`` on another.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
from argparse import Namespace
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from include.glue.price_glue import job, s3io, validation
from include.price_pipeline import alerts, analysis, history, layout, ledger, parquet, quarantine, rules, windows
from include.price_pipeline import settings as pipeline_settings
from include.price_pipeline.analysis import FIRED, NOTIFIED, NOTIFY, PUBLISHING
from tests.conftest import utc
from tests.records import candle, glue_args, seed_pairs

CONFIG = pipeline_settings.load({})
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())
NOW = utc(2030, 1, 1)
#: Series start two hours before a month ends, so ranges and lookbacks cross the month boundary.
T0 = utc(2025, 3, 31, 22, 0)
DEFAULT_RULES = rules.load(rules.DEFAULT_RULES_FILE)
PAIR = DEFAULT_RULES.default_pair
RULE_NAME = DEFAULT_RULES.default_rule.name
#: Another pair, its record in the window's pairs.csv: a change rule with a cooldown and a crossing rule.
OTHER = "BTC/USDT"
OTHER_RULES = (
    rules.Rule("move-10m", rules.CHANGE, threshold_pct=0.5, minutes=10, tolerance_minutes=10, cooldown_minutes=15),
    rules.Rule("cross-100", rules.CROSSING, level=100.0),
)
#: The bulk run's and the live runs' claimant (a run claims its due rules as ``claimed_by`` it).
CLAIMANT = "price_history_backfill/manual__1"


def run_rules(threshold_pct=1.0, lookback_minutes=60, min_abs_move=0.0, repeat_windows=0) -> rules.Rules:
    """The rules a run with these DAG params decides by (``rules.with_overrides``, the live path)."""
    params = {"threshold_pct": threshold_pct, "lookback_minutes": lookback_minutes, "min_abs_move": min_abs_move,
              "repeat_windows": repeat_windows}  # fmt: skip
    return rules.with_overrides(DEFAULT_RULES, params)


def with_other(rule_set: rules.Rules) -> rules.Rules:
    """``rule_set`` with the OTHER pair and its rules."""
    return replace(rule_set, pairs={**rule_set.pairs, OTHER: OTHER_RULES})


RULE = run_rules().default_rule
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class MemoryS3:
    """Just enough S3, in memory, for store, windows, pairs and history: get, (conditional) put, paged listing."""

    def __init__(self, objects: dict[str, bytes] | None = None):
        self.objects = dict(objects or {})
        self.puts: list[str] = []
        self.meta = Namespace(config=Namespace(max_pool_connections=10))

    @staticmethod
    def _etag(body: bytes) -> str:
        return f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'

    def get_object(self, Bucket, Key, **_):  # noqa: N803 - boto3's argument names
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        body = self.objects[Key]
        return {"Body": io.BytesIO(body), "ETag": self._etag(body)}

    def put_object(self, Bucket, Key, Body, ContentType=None, IfNoneMatch=None, IfMatch=None):  # noqa: N803
        if (IfNoneMatch == "*" and Key in self.objects) or (
            IfMatch is not None and (Key not in self.objects or self._etag(self.objects[Key]).strip('"') != IfMatch)
        ):
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        self.objects[Key] = Body
        self.puts.append(Key)
        return {"ETag": self._etag(Body)}

    def get_paginator(self, _name):
        return self

    def paginate(self, Bucket, Prefix, StartAfter=""):  # noqa: N803
        keys = sorted(k for k in self.objects if k.startswith(Prefix) and k > StartAfter)
        yield {
            "Contents": [{"Key": k, "ETag": self._etag(self.objects[k]), "Size": len(self.objects[k])} for k in keys]
        }

    def under(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.objects.items() if k.startswith(prefix)}


def canonical_csv(slot, weighted_average: float) -> bytes:
    """The Glue job's canonical CSV of a consistent record, built with the job's own functions."""
    source = layout.ingestion_key(slot, ".json", pair="ETH/USDT")
    return validation.to_csv(validation.normalize(candle(slot, weighted_average), ALIASES, PAIR, source, "json"))


def seeded(prices: dict, others: dict | None = None) -> MemoryS3:
    """An in-memory bucket holding the default pair's canonical CSV of each ``{slot: weighted_average}``
    and, with ``others``, the OTHER pair's row of each ``{slot: weighted_average}`` in the window's pairs.csv."""
    s3 = MemoryS3({layout.analysis_key(slot): canonical_csv(slot, value) for slot, value in prices.items()})
    for slot, value in (others or {}).items():
        seed_pairs(s3, CONFIG.bucket, slot, {OTHER: value})
    return s3


def entry_of(s3: MemoryS3, slot, pair: str = PAIR) -> dict:
    """``pair``'s ledger entry of the window ``slot`` (``KeyError``: none)."""
    return ledger.parse_entries(s3.objects[layout.pairs_ledger_key(slot)])[pair]


def per_window(s3: MemoryS3, start, end, rule_set: rules.Rules, notify_on_backfill: bool) -> dict:
    """``{ledger key: bytes}`` as price_notification's backfill runs leave them, one window at a time."""
    for slot in layout.slots_between(start, end):
        due, why_not = analysis.due_for_subscribers(
            "backfill", slot + layout.SLOT, NOW, CONFIG.max_alert_age_minutes, notify_on_backfill
        )
        try:
            ledger.analyse_pairs(s3, CONFIG, rule_set, slot, due, why_not, "", CLAIMANT)
        except windows.WindowFailed:
            continue
    return s3.under(layout.CHANGES_PREFIX)


def bulk(s3: MemoryS3, start, end, rule_set: rules.Rules, notify_on_backfill: bool) -> dict:
    """``{ledger key: bytes}`` as history.backfill_history leaves them (no publisher: due rules stay claimed)."""
    with contextlib.suppress(history.NoUsableWindow):
        history.backfill_history(s3, CONFIG, start, end, rule_set, notify_on_backfill, NOW, claimant=CLAIMANT)
    return s3.under(layout.CHANGES_PREFIX)


@st.composite
def histories(draw):
    """A price series with gaps (short and longer than any lookback), a sub-range and a rule_set; in some
    cases, the OTHER pair's records in some of the series' windows (and its rules)."""
    gaps = draw(st.lists(st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 20)), min_size=8, max_size=80))
    moves = st.one_of(st.floats(-0.004, 0.004), st.floats(-0.04, 0.04), st.sampled_from([0.02, -0.02, 0.0]))
    steps = draw(st.lists(moves, min_size=len(gaps), max_size=len(gaps)))
    prices, index, value = {}, 0, 100.0
    for gap, step in zip(gaps, steps, strict=True):
        index += gap + 1
        value = round(value * (1 + step), 6)
        prices[T0 + layout.SLOT * index] = value
    span = index + 3
    first = draw(st.integers(0, span // 2))
    last = draw(st.integers(first + 1, span + 1))
    rule_set = run_rules(
        threshold_pct=draw(st.sampled_from([0.0, 0.3, 1.0, 1.5])),
        lookback_minutes=draw(st.integers(5, 90)),
        min_abs_move=draw(st.sampled_from([0.0, 0.5, 3.0])),
        repeat_windows=draw(st.sampled_from([0, 1, 2, 3, 6])),
    )
    others = {}
    if draw(st.booleans()):
        rule_set = with_other(rule_set)
        # the other pair's record in some of the default pair's windows and some of its gaps
        slots = [T0 + layout.SLOT * i for i in range(span)]
        kept = draw(st.lists(st.booleans(), min_size=len(slots), max_size=len(slots)))
        shift = draw(st.sampled_from([-0.6, 0.0, 0.4]))
        others = {
            slot: round(prices.get(slot, 100.0) + shift, 6) for slot, keep in zip(slots, kept, strict=True) if keep
        }
    return prices, others, T0 + layout.SLOT * first, T0 + layout.SLOT * last, rule_set, draw(st.booleans())


# ------------------------------------------------------------------ bulk analysis == per-window analysis


@PROPERTY
@given(case=histories())
def test_bulk_analysis_gives_every_window_the_ledger_bytes_of_its_own_run(case):
    prices, others, start, end, rule_set, notify_on_backfill = case

    assert bulk(seeded(prices, others), start, end, rule_set, notify_on_backfill) == per_window(
        seeded(prices, others), start, end, rule_set, notify_on_backfill
    )


@PROPERTY
@given(case=histories())
def test_backfill_history_leaves_the_ledger_the_live_runs_leave(case):
    prices, others, start, end, rule_set, notify_on_backfill = case
    live, backfilled = seeded(prices, others), seeded(prices, others)
    per_window(live, start, end, rule_set, notify_on_backfill)
    in_range = {slot for slot in [*prices, *others] if start <= slot < end}
    if not in_range:
        with pytest.raises(history.NoUsableWindow, match="no usable window"):
            history.backfill_history(backfilled, CONFIG, start, end, rule_set, notify_on_backfill, NOW)
        return

    summary = history.backfill_history(
        backfilled, CONFIG, start, end, rule_set, notify_on_backfill, NOW, claimant=CLAIMANT
    )

    # Due rules: the bulk run claims them (publishing, by its claimant) in its ledger pass, as a live run
    # does before publishing; without a publisher they stay claimed.
    assert backfilled.under(layout.CHANGES_PREFIX) == live.under(layout.CHANGES_PREFIX)
    entries = [entry for body in live.under(layout.CHANGES_PREFIX).values()
               for entry in ledger.parse_entries(body).values()]  # fmt: skip
    decisions = Counter(rule["decision"] for entry in entries for rule in entry["rules"].values())
    assert summary["windows"] == len(layout.slots_between(start, end))
    assert summary["windows_seen"] == len(in_range)
    assert summary["missing"] == summary["windows"] - len(in_range)
    assert summary["decisions"] == dict(decisions)
    assert summary["breaches"] == sum(count for decision, count in decisions.items() if decision in FIRED)
    assert summary["ledger"] == {"written": len(in_range), "unchanged": 0, "due": decisions[NOTIFY]}
    windows_of = Counter(entry["pair"] for entry in entries)
    assert {pair: counts["windows"] for pair, counts in summary["pairs"].items()} == {
        pair: windows_of[pair] for pair in rule_set.pairs
    }
    assert all(entry["claimed_by"] == CLAIMANT for entry in entries if entry["decision"] == PUBLISHING)


def test_repeat_windows_suppress_a_continuing_move_in_bulk_as_in_the_live_run():
    prices = {T0 + layout.SLOT * i: value for i, value in enumerate([100.0, 102.0, 104.0, 102.0, 104.5])}
    rule_set = run_rules(threshold_pct=1.0, repeat_windows=2)
    s3, sent = seeded(prices), []

    def publish(alert):
        sent.append(alert)
        return f"message-{len(sent)}"

    summary = history.backfill_history(s3, CONFIG, T0, T0 + layout.SLOT * 5, rule_set, True, NOW, publish)

    decisions = [entry_of(s3, slot)["rules"][RULE_NAME]["decision"] for slot in prices]
    # the up breach at 4 is three windows after the last up alert (at 1): it alerts again
    assert decisions == ["no_previous_record", NOTIFIED, "suppressed_cooldown", NOTIFIED, NOTIFIED]
    assert summary["notified"] == len(sent) == 3


def test_breaches_are_suppressed_as_backfill_with_the_live_reason_unless_notify_on_backfill():
    prices = {T0 + layout.SLOT * i: v for i, v in enumerate([100.0, 105.0])}
    off, on = seeded(prices), seeded(prices)

    history.backfill_history(off, CONFIG, T0, T0 + 2 * layout.SLOT, run_rules(), False, NOW, claimant=CLAIMANT)
    history.backfill_history(on, CONFIG, T0, T0 + 2 * layout.SLOT, run_rules(), True, NOW, claimant=CLAIMANT)

    suppressed, due = entry_of(off, T0 + layout.SLOT), entry_of(on, T0 + layout.SLOT)
    assert (suppressed["rules"][RULE_NAME]["decision"], suppressed["rules"][RULE_NAME]["reason"]) == (
        "suppressed_backfill",
        "backfill run (notify_on_backfill is off)",
    )
    assert suppressed["decision"] == ledger.ANALYSED
    assert due["rules"][RULE_NAME]["decision"] == NOTIFY
    assert (due["decision"], due["claimed_by"]) == (PUBLISHING, CLAIMANT)


def test_summary_counts_missing_windows_breaches_and_names_the_largest_moves():
    values = {0: 100.0, 1: 100.2, 3: 103.0, 4: 99.0}
    s3 = seeded({T0 + layout.SLOT * i: v for i, v in values.items()}, {T0 + layout.SLOT * 5: 101.0})
    bad = layout.ingestion_key(T0 + layout.SLOT * 2, ".json", pair="ETH/USDT")
    s3.objects[layout.quarantine_keys(T0 + layout.SLOT * 2, bad)[1]] = json.dumps({"reason": "x"}).encode()
    end = T0 + layout.SLOT * 7

    summary = history.backfill_history(s3, CONFIG, T0, end, with_other(run_rules()), False, NOW)

    assert (summary["windows"], summary["windows_seen"], summary["missing"]) == (7, 5, 2)
    assert summary["missing_windows"] == ["2025-03-31T22:10:00Z", "2025-03-31T22:30:00Z"]
    assert summary["breaches"] == 2
    assert summary["quarantined"] == 1
    assert summary["objects"] == 6  # the quarantined one and the five records used
    assert summary["decisions"] == {"below_threshold": 1, "no_previous_record": 3, "suppressed_backfill": 2}
    assert summary["pairs"] == {
        OTHER: {"windows": 1, "decisions": {"no_previous_record": 2}},  # its first record: both its rules
        PAIR: {"windows": 4, "decisions": {"below_threshold": 1, "no_previous_record": 1, "suppressed_backfill": 2}},
    }
    assert [(m["window_start"], m["pair"], m["rule"]) for m in summary["largest_moves"]] == [
        ("2025-03-31T22:20:00Z", PAIR, RULE_NAME),
        ("2025-03-31T22:15:00Z", PAIR, RULE_NAME),
        ("2025-03-31T22:05:00Z", PAIR, RULE_NAME),
    ]
    assert summary["largest_moves"][0]["change_pct"] == round((99.0 - 103.0) / 103.0 * 100, 4)
    assert summary["largest_moves"][0]["decision"] == "suppressed_backfill"


@pytest.mark.parametrize("text", ["2025-03-01T00:03:00Z", "2025-03-01T00:05:00+01:00", "2025-03-01T00:05:00"])
def test_range_bounds_must_be_utc_window_starts(text):
    with pytest.raises(ValueError, match="not a"):
        history.parse_window_start(text)


def test_range_bounds_parse_to_aware_utc():
    assert history.parse_window_start("2025-03-01T00:05:00Z") == utc(2025, 3, 1, 0, 5)
    assert history.parse_window_start("2025-03-01T00:05:00+00:00") == utc(2025, 3, 1, 0, 5)


# ------------------------------------------------------------------ ledger writes


def test_ledger_writes_skip_identical_entries_and_never_overwrite_a_notified_one():
    prices = {T0 + layout.SLOT * i: 100.0 + 2 * i for i in range(4)}
    s3 = seeded(prices)
    end = T0 + layout.SLOT * 4
    first = history.backfill_history(s3, CONFIG, T0, end, run_rules(), False, NOW)
    # a live run of the window T0+5 min claims its breach and publishes it
    notified_slot = T0 + layout.SLOT
    live = ledger.analyse_pairs(s3, CONFIG, run_rules(), notified_slot, True, "", "", "live/run")
    assert ledger.publish_alerts(s3, CONFIG, notified_slot, live["alerts"], "live/run", lambda _: "message-1")["sent"]
    notified_key = layout.pairs_ledger_key(notified_slot)
    notified = s3.objects[notified_key]
    changed_slot = T0 + 2 * layout.SLOT
    changed_key = layout.pairs_ledger_key(changed_slot)
    stale = entry_of(s3, changed_slot)
    stale["rules"][RULE_NAME] |= {"decision": "below_threshold", "reason": "stale"}
    s3.objects[changed_key] = ledger.entries_bytes({PAIR: stale})
    s3.puts.clear()

    second = history.backfill_history(s3, CONFIG, T0, end, run_rules(), False, NOW)

    assert first["ledger"] == {"written": 4, "unchanged": 0, "due": 0}
    assert second["ledger"] == {"written": 1, "unchanged": 3, "due": 0}
    assert s3.objects[notified_key] == notified
    assert entry_of(s3, notified_slot)["decision"] == NOTIFIED
    assert entry_of(s3, notified_slot)["rules"][RULE_NAME]["sns_message_id"] == "message-1"
    assert entry_of(s3, changed_slot)["rules"][RULE_NAME]["decision"] == "suppressed_backfill"
    assert [k for k in s3.puts if k.startswith(layout.CHANGES_PREFIX)] == [changed_key]


def test_an_entry_notified_between_listing_and_writing_is_kept():
    """The conditional write fails, the object is read again and its pair's entry, being notified, is left
    alone; the other pair's entry is still replaced."""
    slot = T0 + layout.SLOT
    rule_set = with_other(run_rules())
    s3 = seeded({T0: 100.0, slot: 103.0}, {T0: 100.0, slot: 101.0})
    history.backfill_history(s3, CONFIG, T0, slot + layout.SLOT, rule_set, False, NOW)
    key = layout.pairs_ledger_key(slot)
    fresh = seeded({T0: 100.0, slot: 103.0}, {T0: 100.0, slot: 99.0})  # the other pair's record changed since
    history.backfill_history(fresh, CONFIG, T0, slot + layout.SLOT, rule_set, False, NOW)
    new = fresh.objects[key]
    stored = ledger.parse_entries(s3.objects[key])
    assert stored[PAIR] == ledger.parse_entries(new)[PAIR]
    assert stored[OTHER] != ledger.parse_entries(new)[OTHER]
    sent = {**stored[PAIR], "decision": NOTIFIED}
    sent["rules"] = {
        name: {**rule, "decision": NOTIFIED, "sns_message_id": "m"} for name, rule in sent["rules"].items()
    }
    notified = ledger.entries_bytes({**stored, PAIR: sent})
    real_get = s3.get_object

    def get_then_notify(Bucket, Key, **kwargs):  # noqa: N803
        response = real_get(Bucket=Bucket, Key=Key, **kwargs)
        if Key == key and s3.objects[key] != notified:
            s3.objects[key] = notified  # a live run publishes right after our read
        return response

    s3.get_object = get_then_notify

    counts = history.write_ledger(s3, CONFIG.bucket, layout.CHANGES_PREFIX, {key: new}, slot, slot)

    assert counts == {"written": 1, "unchanged": 0}
    assert ledger.parse_entries(s3.objects[key]) == {PAIR: sent, OTHER: ledger.parse_entries(new)[OTHER]}


def test_a_claim_of_another_run_is_kept_byte_for_byte_and_not_published_by_the_bulk_run():
    """A live run claimed the window's breach (publishing) and has not recorded it yet: the bulk run with
    notify_on_backfill leaves its claim as stored and does not publish it."""
    prices = {T0: 100.0, T0 + layout.SLOT: 103.0}
    s3 = seeded(prices)
    slot = T0 + layout.SLOT
    live = ledger.analyse_pairs(s3, CONFIG, run_rules(), slot, True, "", "", "live/run")
    assert live["alerts"]
    claimed = s3.objects[layout.pairs_ledger_key(slot)]
    sent = []

    summary = history.backfill_history(s3, CONFIG, T0, slot + layout.SLOT, run_rules(), True, NOW,
                                       lambda alert: sent.append(alert) or "m", claimant=CLAIMANT)  # fmt: skip

    assert s3.objects[layout.pairs_ledger_key(slot)] == claimed
    assert entry_of(s3, slot)["claimed_by"] == "live/run"
    assert sent == []
    assert (summary["notified"], summary["not_published"]) == (0, 1)
    assert summary["ledger"] == {"written": 1, "unchanged": 1, "due": 1}


def test_publish_due_sends_each_due_window_once_and_records_it_notified():
    prices = {T0 + layout.SLOT * i: v for i, v in enumerate([100.0, 103.0, 103.1, 99.0])}
    s3 = seeded(prices)
    sent = []

    def publish(alert):
        sent.append(alert["subject"])
        return f"message-{len(sent)}"

    end = T0 + layout.SLOT * 4
    first = history.backfill_history(
        s3, CONFIG, T0, end, run_rules(), True, NOW, publish, "http://ui/run", claimant=CLAIMANT
    )
    again = history.backfill_history(
        s3, CONFIG, T0, end, run_rules(), True, NOW, publish, "http://ui/run", claimant=CLAIMANT
    )

    assert first["notified"] == 2
    assert again["notified"] == 0
    assert again["not_published"] == 2  # notified already
    assert sent == ["ETH/USDT up 3.00% in 5 min: 103.00", "ETH/USDT down 3.98% in 5 min: 99.0000"]
    entry = entry_of(s3, T0 + layout.SLOT)
    assert (entry["decision"], entry["rules"][RULE_NAME]["sns_message_id"]) == (NOTIFIED, "message-1")
    assert "claimed_by" not in entry


# ------------------------------------------------------------------ Parquet


def month_rows(count: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        slot = utc(2025, 3, 1) + layout.SLOT * i
        rows.extend(parquet.canonical_rows(canonical_csv(slot, round(rng.uniform(90, 110), 6))))
    return rows


def test_parquet_bytes_are_the_same_for_the_same_rows_in_any_order():
    rows = month_rows(300)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)

    assert parquet.parquet_bytes(rows) == parquet.parquet_bytes(rows) == parquet.parquet_bytes(shuffled)
    assert parquet.parquet_bytes(rows) != parquet.parquet_bytes(rows[:-1])


def test_parquet_reads_back_with_the_canonical_columns_a_utc_timestamp_and_float64_numbers():
    rows = month_rows(5)
    rows[2]["quote_volume"] = None

    frame = pd.read_parquet(io.BytesIO(parquet.parquet_bytes(rows)))

    assert tuple(frame.columns) == layout.CANONICAL_COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2025-03-01T00:00:00Z")
    for column in parquet.FLOAT_COLUMNS:
        assert frame[column].dtype == "float64"
    assert frame["quote_volume"].isna().tolist() == [False, False, True, False, False]
    assert frame["weighted_average"].tolist() == [row["weighted_average"] for row in rows]
    assert frame["source_format"].tolist() == ["json"] * 5


def test_each_month_gets_one_parquet_object_from_all_its_csvs_and_a_rerun_writes_nothing():
    prices = {T0 + layout.SLOT * i: 100.0 + i for i in range(36)}  # 22:00 on 31 March to 01:00 on 1 April
    s3 = seeded(prices)
    end = T0 + layout.SLOT * 36

    first = history.backfill_history(s3, CONFIG, T0 + layout.SLOT * 30, end, run_rules(), False, NOW)
    s3.puts.clear()
    again = history.backfill_history(s3, CONFIG, T0 + layout.SLOT * 30, end, run_rules(), False, NOW)

    assert [(p["key"], p["rows"]) for p in first["parquet"]] == [(layout.parquet_key(2025, 4, pair="ETH/USDT"), 12)]
    assert [p["written"] for p in again["parquet"]] == [False]
    assert s3.puts == []
    frame = pd.read_parquet(io.BytesIO(s3.objects[layout.parquet_key(2025, 4, pair="ETH/USDT")]))
    assert frame["timestamp"].min() == pd.Timestamp("2025-04-01T00:00:00Z")
    assert layout.parquet_key(2025, 3, pair="ETH/USDT") not in s3.objects  # March is outside the range


# ------------------------------------------------------------------ the Glue job's range listing


def raw_bucket():
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    return s3


def job_args(start, end) -> Namespace:
    return glue_args("raw", start, end)


@pytest.fixture
def moto_env(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield


def test_a_long_range_lists_day_partitions_and_finds_exactly_the_keys_of_its_window_prefixes(moto_env, monkeypatch):
    s3 = raw_bucket()
    start = utc(2025, 3, 1, 22, 0)
    end = start + timedelta(hours=4)  # 48 windows over two days
    keys = [
        layout.ingestion_key(start + layout.SLOT * i, (".json", ".csv", ".x")[i % 3], pair="ETH/USDT")
        for i in range(48)
    ]
    decoys = [
        layout.ingestion_key(start - layout.SLOT, ".json", pair="ETH/USDT"),  # before the range
        layout.ingestion_key(end, ".json", pair="ETH/USDT"),  # the end is excluded
        f"{layout.INGESTION_PREFIX}{layout.partition(start)}{layout.slot_stamp(start + timedelta(days=1))}.json",
        f"{layout.INGESTION_PREFIX}{layout.partition(start)}notes.txt",
    ]
    for key in keys + decoys:
        s3.put_object(Bucket="raw", Key=key, Body=b"x")
    listed = []
    real = s3.get_paginator

    def counting(name):
        paginator = real(name)
        original = paginator.paginate

        def paginate(**kwargs):
            listed.append(kwargs["Prefix"])
            return original(**kwargs)

        paginator.paginate = paginate
        return paginator

    monkeypatch.setattr(s3, "get_paginator", counting)

    by_day = s3io.list_raw_keys(s3, job_args(start, end))
    days_listed = len(listed)
    monkeypatch.setattr(s3io, "LIST_BY_DAY_ABOVE_SLOTS", 10_000)
    by_window = s3io.list_raw_keys(s3, job_args(start, end))

    assert by_day == by_window == sorted(keys)
    assert days_listed == 2
    assert len(listed) == 2 + 48


def test_a_range_run_writes_what_single_window_runs_write_and_quarantines_under_the_objects_window(moto_env):
    from local.feed import render, synthetic_record

    start = utc(2025, 3, 2, 0, 0)
    slots = [start + layout.SLOT * i for i in range(20)]
    bad_slot = slots[7]
    raw = {
        layout.ingestion_key(slot, f".{fmt}", pair="ETH/USDT"): render(synthetic_record(slot), fmt)
        for slot, fmt in zip(slots, ["json", "csv", "xml", "txt"] * 5, strict=True)
        if slot != bad_slot
    }
    raw[layout.ingestion_key(bad_slot, ".json", pair="ETH/USDT")] = (
        b'{"date": %d, "weightedAverage": "NaN"}' % bad_slot.timestamp()
    )

    def outputs(runs) -> dict:
        s3 = raw_bucket()
        for stale in s3.list_objects_v2(Bucket="raw").get("Contents", []):  # the same mock serves both calls
            s3.delete_object(Bucket="raw", Key=stale["Key"])
        for key, body in raw.items():
            s3.put_object(Bucket="raw", Key=key, Body=body)
        for first, last in runs:
            job.run(s3, job_args(first, last))
        listed = s3.list_objects_v2(Bucket="raw")["Contents"]
        return {o["Key"]: s3.get_object(Bucket="raw", Key=o["Key"])["Body"].read() for o in listed}

    one_run = outputs([(start, start + layout.SLOT * 20)])
    window_runs = outputs([(slot, slot + layout.SLOT) for slot in slots])
    range_key = layout.range_objects_key(start, start + layout.SLOT * 20)
    range_body = one_run.pop(range_key)

    assert one_run == window_runs
    canonical = {k: v for k, v in one_run.items() if k.startswith(layout.ANALYSIS_PREFIX)}
    assert history.range_objects(MemoryS3({range_key: range_body}), "raw", range_key) == canonical
    assert not any("_ranges/" in key for key in window_runs)  # a one-window run writes no range object
    copy_key, reason_key = layout.quarantine_keys(bad_slot, layout.ingestion_key(bad_slot, ".json", pair="ETH/USDT"))
    assert json.loads(one_run[reason_key])["window"] == layout.slot_stamp(bad_slot)
    assert copy_key in one_run
    assert sum(k.startswith(layout.ANALYSIS_PREFIX) for k in one_run) == 19


def test_listed_sizes_spare_the_head_request_and_still_refuse_an_oversized_object(moto_env):
    s3 = raw_bucket()
    slot = utc(2025, 3, 3, 12, 0)
    key = layout.ingestion_key(slot, ".json", pair="ETH/USDT")
    s3.put_object(Bucket="raw", Key=key, Body=b"x" * 2048)
    args = job_args(slot, slot + layout.SLOT)
    args.max_object_bytes = 1024
    calls = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))

    summary = job.run(s3, args)

    assert summary["quarantined"] == [{"key": key, "reason": "object is 2048 bytes, over the 1024-byte cap"}]
    assert "HeadObject" not in calls
    assert "GetObject" not in calls


def test_the_analysis_takes_the_glue_runs_range_object_for_listed_keys_and_reads_the_rest():
    prices = {T0 + layout.SLOT * i: 100 + i * 0.7 for i in range(40)}
    start, end, rule_set = T0 + layout.SLOT * 10, T0 + layout.SLOT * 30, run_rules(1.0, 60, 0.0, 2)
    reference = seeded(prices)
    history.backfill_history(reference, CONFIG, start, end, rule_set, False, NOW)
    s3 = seeded(prices)
    in_range = [layout.analysis_key(slot) for slot in layout.slots_between(start, end)]
    stale_key = layout.analysis_key(T0 + layout.SLOT * 200)  # named by the range object, gone from S3
    written = [(key, s3.objects[key]) for key in in_range[:-3]] + [(stale_key, b"not, a, price\n")]
    s3.objects[layout.range_objects_key(start, end)] = job.range_objects(written)
    reads = []
    real_get = s3.get_object

    def get_object(Bucket, Key, **kwargs):  # noqa: N803
        reads.append(Key)
        return real_get(Bucket, Key, **kwargs)

    s3.get_object = get_object

    summary = history.backfill_history(s3, CONFIG, start, end, rule_set, False, NOW)

    assert s3.under(layout.CHANGES_PREFIX) == reference.under(layout.CHANGES_PREFIX)
    assert summary["canonical_csvs"]["from_range_object"] == len(in_range) - 3
    assert not set(reads) & set(in_range[:-3])
    assert set(in_range[-3:]) <= set(reads)
    assert stale_key not in reads


def test_the_range_object_lists_each_canonical_object_once_in_key_order_and_rereads_to_the_same_bytes():
    written = [("b.csv", b'x,y\n2,"a,b"\n'), ("a.csv", "x,y\n1,é\n".encode())]
    body = job.range_objects(written)

    assert body == job.range_objects(list(reversed(written)))
    assert [json.loads(line)["key"] for line in body.decode().splitlines()] == ["a.csv", "b.csv"]
    assert history.range_objects(MemoryS3({"r.jsonl": body}), "bucket", "r.jsonl") == dict(written)


@pytest.mark.parametrize(
    ("objects", "cpus", "processes"),
    [
        (1, 8, 1),
        (job.PROCESSES_ABOVE_OBJECTS, 8, 1),
        (job.PROCESSES_ABOVE_OBJECTS + 1, 2, 2),
        (8640, 64, 4),
        (8640, 1, 1),
    ],
)
def test_only_long_runs_spread_over_processes_one_per_cpu_up_to_the_cap(objects, cpus, processes):
    assert job.worker_processes(objects, cpus) == processes


# ------------------------------------------------------------------ a window waits for earlier normalizations


def waiting_case():
    """Windows every 5 minutes from T0 with CSVs, except T0+15 min, whose raw record is there unnormalized."""
    prices = {T0 + layout.SLOT * i: 100.0 + (3.0 if i == 3 else 0.0) for i in range(6) if i != 3}
    s3 = seeded(prices)
    s3.objects[layout.ingestion_key(T0 + layout.SLOT * 3, ".json", pair="ETH/USDT")] = b"{}"
    return s3, T0 + layout.SLOT * 4


def analyse(s3, slot, still_normalizing=None) -> dict:
    """The default pair's ledger entry of ``slot`` once a backfill run (``ledger.analyse_pairs``) analysed it."""
    rule_set = run_rules(1.0, 60, 0.0, 2)
    ledger.analyse_pairs(s3, CONFIG, rule_set, slot, False, "backfill", "", "", still_normalizing=still_normalizing)
    return entry_of(s3, slot)


def test_a_window_waits_while_an_earlier_record_of_its_lookback_is_still_being_normalized():
    s3, slot = waiting_case()
    asked = []

    with pytest.raises(windows.WindowNotReady, match=layout.slot_stamp(T0 + layout.SLOT * 3)):
        analyse(s3, slot, lambda slots: asked.append(slots) or slots)

    assert asked == [[T0 + layout.SLOT * 3]]
    assert not s3.under(layout.CHANGES_PREFIX)  # nothing decided yet


def test_a_window_goes_on_when_the_earlier_normalization_has_finished_without_a_csv():
    s3, slot = waiting_case()

    entry = analyse(s3, slot, lambda slots: [])

    assert entry["rules"][RULE_NAME]["reference"]["timestamp"] == layout.iso(T0 + layout.SLOT * 2)


def test_a_window_whose_earlier_windows_all_have_csvs_asks_nothing_and_lists_no_raw_prefix():
    # every window the rule may look at (rule.history: its lookback and, for a cooldown, the runs it follows)
    span = run_rules(1.0, 60, 0.0, 2).default_rule.history // layout.SLOT
    s3 = seeded({T0 + layout.SLOT * i: 100.0 for i in range(-span, 6)})
    listed = []
    real = s3.paginate

    def paginate(Bucket, Prefix, StartAfter=""):  # noqa: N803
        listed.append(Prefix)
        return real(Bucket, Prefix, StartAfter)

    s3.paginate = paginate

    analyse(s3, T0 + layout.SLOT * 5, lambda slots: pytest.fail("asked the scheduler without a reason"))

    assert not any(prefix.startswith(layout.INGESTION_PREFIX) for prefix in listed)


# ------------------------------------------------------------------------------ quarantine report to ops

NO_WA = "no weighted_average, and no volume and quote_volume to derive it"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("record 0: weighted_average is not finite: 'NaN'", "weighted_average is not finite: 'inf'"),
        ("high 0.0817 is below low 0.0818", "high 3120.5 is below low 3121"),
        (
            "timestamp 2025-04-03T10:02:00+00:00 is not on a 5-minute boundary",
            "timestamp 2026-01-01T00:01:00+00:00 is not on a 5-minute boundary",
        ),
        (f"{NO_WA}; record 1: {NO_WA}; and 4 more", NO_WA),
        ("object is 2048 bytes, over the 1024-byte cap", "object is 99999 bytes, over the 1024-byte cap"),
        (
            "record of 2025-04-03T10:00:00Z found under window 2025-04-03T10:05:00Z: an object writes only its own",
            "record of 2025-05-01T00:00:00Z found under window 2025-05-01T00:05:00Z: an object writes only its own",
        ),
        (
            "record names pair 'BTC/USD', not the configured ETH/USDT",
            'record names pair "it\'s", not the configured ETH/USDT',
        ),
    ],
)
def test_reasons_that_differ_only_in_their_values_are_one_kind(one, other):
    assert quarantine.reason_kind(one) == quarantine.reason_kind(other)


def test_a_reason_kind_keeps_what_is_said_and_different_reasons_stay_apart():
    grammar = job.GRAMMAR_REFUSED

    assert quarantine.reason_kind(NO_WA) == NO_WA
    assert quarantine.reason_kind(grammar) == grammar  # its '.', '-', '/' are the grammar, not values
    assert quarantine.reason_kind("timestamp 2025-04-03T10:02:00+00:00 is not on a 5-minute boundary") == (
        "timestamp N is not on a 5-minute boundary"
    )
    assert quarantine.reason_kind("open 'x' is not a number") != quarantine.reason_kind("close 'x' is not a number")


def note(n: int, reason: str, source_key: str = "") -> dict:
    key = f"{layout.QUARANTINE_PREFIX}year=2025/month=04/day=03/20250403T10{n:02d}00Z/{n:04x}.reason.json"
    return {"key": key, "source_key": source_key or f"crypto/01-data-ingestion/k{n:03d}.json", "reason": reason}


def report_summary(quarantined: int, objects: int, seen: int = 2, windows: int = 13) -> dict:
    return {
        "start": "2025-04-03T10:00:00Z",
        "end": "2025-04-03T11:05:00Z",
        "quarantined": quarantined,
        "objects": objects,
        "windows": windows,
        "windows_seen": seen,
        "missing": windows - seen,
        "pairs": {"ETH/USDT": {"windows": seen}},
    }


def test_the_ops_report_gives_the_counts_and_the_commonest_kinds_of_reason_most_first_with_an_example_each():
    notes = [note(n, NO_WA) for n in range(10)] + [
        note(10, "record 0: weighted_average is not finite: 'NaN'"),
        note(11, "record 0: weighted_average is not finite: 'inf'"),
        note(12, "high 1 is below low 2"),
    ]
    notes += [note(20 + n, f"reason number {chr(97 + n)}{chr(97 + n)} is rare") for n in range(4)]

    subject, message = quarantine.quarantine_report(report_summary(17, 19), notes, "http://airflow/run")

    assert subject == "[price pipeline] Quarantined in range 2025-04-03T10:00Z..2025-04-03T11:05Z: 17 of 19 objects"
    lines = message.splitlines()
    assert lines[0] == (
        "The bulk analysis of 2025-04-03T10:00:00Z to 2025-04-03T11:05:00Z (end excluded) succeeded, but the Glue "
        "job quarantined 17 of 19 objects of the range: ETH/USDT: 2 of 13 windows have a usable record."
    )
    kinds = [line for line in lines if line.startswith("- ")]
    assert kinds == [
        f'- 10 objects: "{NO_WA}"',
        "- 2 objects: \"weighted_average is not finite: '...'\"",
        '- 1 object: "high N is below low N"',
        '- 1 object: "reason number aa is rare"',
        '- 1 object: "reason number bb is rare"',
        "- and 2 other kinds of reason",
    ]
    assert '  e.g. "crypto/01-data-ingestion/k010.json": "record 0: weighted_average is not finite: \'NaN\'"' in lines
    assert "Commonest reasons:" in lines
    assert lines[-1] == "Run: http://airflow/run"


def test_text_from_s3_reaches_the_ops_report_quoted_on_one_line():
    hostile_key = "crypto/01-data-ingestion/x\nReason: all fine <!channel>.json"
    notes = [note(0, "bad <!channel>\nDAG: forged & more", hostile_key)]

    _, message = quarantine.quarantine_report(report_summary(1, 1), notes, "u")

    assert "<!channel>" not in message
    assert "\nReason: all fine" not in message
    assert "\nDAG: forged" not in message
    assert alerts.quoted(hostile_key) in message


def test_a_sample_of_the_reasons_is_said_to_be_one():
    _, message = quarantine.quarantine_report(report_summary(900, 900), [note(0, NO_WA)], "u")

    assert "Commonest reasons (from the reason files of 1 of them, spread over the range):" in message


def test_the_report_reads_a_bounded_spread_of_reason_files_in_one_listing_and_is_none_without_quarantine(
    monkeypatch,
):
    start = utc(2025, 4, 3)
    end = start + layout.SLOT * 288
    s3 = MemoryS3()
    for n, slot in enumerate(layout.slots_between(start, end)):
        for copy in range(3):
            source = f"{layout.ingestion_key(slot, '.json', pair='ETH/USDT')}{copy}"
            body = json.dumps({"source_key": source, "reason": NO_WA if n % 4 else "high 1 is below low 2"}).encode()
            s3.objects[layout.quarantine_keys(slot, source)[1]] = body
    s3.objects[layout.quarantine_keys(end, "after the range")[1]] = b"{}"
    reads = []
    real_get = s3.get_object
    monkeypatch.setattr(s3, "get_object", lambda **kwargs: reads.append(kwargs["Key"]) or real_get(**kwargs))
    monkeypatch.setattr(quarantine, "QUARANTINE_NOTES_READ", 100)

    summary = report_summary(864, 864, 0, 288) | {"start": layout.iso(start), "end": layout.iso(end)}

    subject, message = quarantine.report_quarantine(s3, CONFIG, summary, "u")

    assert subject.endswith(": 864 of 864 objects")
    assert len(reads) == len(set(reads)) == 96  # every 9th of 864
    assert {layout.slot_of_key(key).hour for key in reads} == set(range(24))
    assert "(from the reason files of 96 of them, spread over the range)" in message
    assert f'- 72 objects: "{NO_WA}"' in message
    assert '- 24 objects: "high N is below low N"' in message
    assert quarantine.report_quarantine(s3, CONFIG, summary | {"quarantined": 0}, "u") is None


def test_an_object_used_for_its_window_and_quarantined_for_another_record_counts_once():
    slot = T0
    used, superseded, bad = (
        layout.ingestion_key(slot, suffix, pair="ETH/USDT") for suffix in ("-v2.json", ".json", ".xml")
    )
    price = analysis.Price(slot, 100.0, "ETH/USDT", used, (superseded,))
    reason_keys = [layout.quarantine_keys(slot, key)[1] for key in (used, bad)]

    assert history.objects_seen(reason_keys, [price], layout.QUARANTINE_PREFIX) == 3


def test_an_earlier_window_with_another_pairs_record_only_is_asked_about_and_holds_nobody_once_normalized():
    """Only another pair's record in the gap: no pair is the clock (issue 19), so that window's run goes on
    at the deadline and normalizes it. An analysis asks whether a run can still do so (it did not ask,
    when that run waited for the default pair's record), and goes on when none can."""
    s3, slot = waiting_case()
    gap = T0 + layout.SLOT * 3
    del s3.objects[layout.ingestion_key(gap, ".json", pair="ETH/USDT")]
    s3.objects[layout.ingestion_key(gap, ".json", pair="BTC/USDT")] = b"{}"
    asked = []

    entry = analyse(s3, slot, lambda slots: asked.extend(slots) and [])

    assert asked == [gap]
    assert entry["rules"][RULE_NAME]["reference"]["timestamp"] == layout.iso(T0 + layout.SLOT * 2)


@pytest.mark.parametrize(
    ("run_type", "ended_ago", "looks_once"),
    [
        ("backfill", timedelta(minutes=1), True),  # a backfill's record should be there: look once
        ("scheduled", timedelta(seconds=899), False),  # live: wait up to the sensor timeout
        ("manual", timedelta(seconds=899), False),
        ("scheduled", timedelta(seconds=901), True),  # a run started after the timeout (catch-up, clear)
        ("manual", timedelta(days=30), True),
    ],
)
def test_a_run_looks_once_for_a_record_that_should_already_be_there(run_type, ended_ago, looks_once):
    now = T0 + timedelta(days=1)

    why = windows.looks_once(run_type, now - ended_ago, now, 900)

    assert (why is not None) == looks_once


def test_a_lookback_off_the_five_minute_grid_follows_a_run_back_without_skipping_a_window():
    """Found by the property test above: with lookback_minutes=81 the live run first loaded from 22:24,
    then, following the run back, up to 22:19, so 22:20's price was read by neither load. 23:35 then
    compared with 22:15, fired, and 23:55 alerted where the bulk run (and the series) says its run's alert
    at 23:45 was 10 minutes before: suppressed."""
    prices = {
        utc(2025, 3, 31, 22, 5): 100.0, utc(2025, 3, 31, 22, 10): 100.0, utc(2025, 3, 31, 22, 15): 100.0,
        utc(2025, 3, 31, 22, 20): 100.390625, utc(2025, 3, 31, 23, 35): 100.390625,
        utc(2025, 3, 31, 23, 40): 100.390625, utc(2025, 3, 31, 23, 45): 100.782776,
        utc(2025, 3, 31, 23, 50): 100.782776, utc(2025, 3, 31, 23, 55): 101.176459,
    }  # fmt: skip
    rule_set = run_rules(threshold_pct=0.0, lookback_minutes=81, repeat_windows=2)
    start, end = T0, utc(2025, 4, 1, 0, 0)

    live = seeded(prices)

    assert per_window(live, start, end, rule_set, False) == bulk(seeded(prices), start, end, rule_set, False)
    rule = entry_of(live, utc(2025, 3, 31, 23, 55))["rules"][RULE_NAME]
    assert (rule["decision"], rule["suppressed_by"]) == ("suppressed_cooldown", "2025-03-31T23:45:00Z")


def test_the_ops_report_counts_each_pairs_usable_windows():
    """Issue 36: "288 of 288 windows have a usable record" when one pair had none for a window."""
    start = datetime(2025, 4, 3, tzinfo=UTC)
    entry = {"rules": {}}
    entries = {slot: {"ETH/USDT": {**entry, "pair": "ETH/USDT"}, "BTC/USDT": {**entry, "pair": "BTC/USDT"}}
               for slot in layout.slots_between(start, start + timedelta(days=1))}  # fmt: skip
    del entries[start + timedelta(hours=7, minutes=40)]["BTC/USDT"]
    summary = history.summarize(entries, start, start + timedelta(days=1), 1, ["ETH/USDT", "BTC/USDT", "SOL/USDT"])

    _, message = quarantine.quarantine_report({**summary, "objects": 575}, [], "http://airflow/run")

    assert message.splitlines()[0].endswith(
        "quarantined 1 of 575 objects of the range: BTC/USDT: 287 of 288 windows have a usable record; "
        "ETH/USDT: 288 of 288 windows have a usable record; SOL/USDT: 0 of 288 windows have a usable record."
    )
