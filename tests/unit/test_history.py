"""Bulk history analysis: the same ledger bytes as the live DAG's per-window analysis, deterministic
Parquet, ledger writes that never overwrite a notified window, and the Glue job's range listing.

The per-window reference is ``windows.analyse_window`` itself (what every price_notification run does),
run for each window on an in-memory S3; the bulk side is ``history`` on another.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from argparse import Namespace
from datetime import timedelta

import boto3
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from include.glue import normalize_price_record as glue
from include.price_pipeline import alerts, analysis, history, layout, rules, windows
from include.price_pipeline import settings as pipeline_settings
from include.price_pipeline.analysis import NOTIFIED, NOTIFY
from tests.conftest import utc
from tests.records import candle, glue_args

CONFIG = pipeline_settings.load({})
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())
NOW = utc(2030, 1, 1)
#: Series start two hours before a month ends, so ranges and lookbacks cross the month boundary.
T0 = utc(2025, 3, 31, 22, 0)
DEFAULT_RULES = rules.load(rules.DEFAULT_RULES_FILE)


def run_rules(threshold_pct=1.0, lookback_minutes=60, min_abs_move=0.0, repeat_windows=0) -> rules.Rules:
    """The rules a run with these DAG params decides by (``rules.with_overrides``, the live path)."""
    params = {"threshold_pct": threshold_pct, "lookback_minutes": lookback_minutes, "min_abs_move": min_abs_move,
              "repeat_windows": repeat_windows}  # fmt: skip
    return rules.with_overrides(DEFAULT_RULES, params)


RULE = run_rules().default_rule
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class MemoryS3:
    """Just enough S3, in memory, for store, windows and history: get, (conditional) put, paged listing."""

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
    source = layout.ingestion_key(slot, ".json")
    return glue.to_csv(glue.normalize(candle(slot, weighted_average), ALIASES, "ETH/USDT", source, "json"))


def seeded(prices: dict) -> MemoryS3:
    """An in-memory bucket holding the canonical CSV of each ``{slot: weighted_average}``."""
    return MemoryS3({layout.analysis_key(slot): canonical_csv(slot, value) for slot, value in prices.items()})


def per_window(s3: MemoryS3, start, end, rule_set: rules.Rules, notify_on_backfill: bool) -> dict:
    """``{slot: ledger bytes}`` as price_notification's backfill runs reach them, one window at a time."""
    out = {}
    for slot in layout.slots_between(start, end):
        due, why_not = analysis.due_for_subscribers(
            "backfill", slot + layout.SLOT, NOW, CONFIG.max_alert_age_minutes, notify_on_backfill
        )
        try:
            result = windows.analyse_window(s3, CONFIG, slot, rule_set, due, why_not, "")
        except windows.WindowFailed:
            continue
        out[slot] = alerts.ledger_bytes(result["entry"])
    return out


def bulk(s3: MemoryS3, start, end, rule_set: rules.Rules, notify_on_backfill: bool) -> dict:
    """``{slot: ledger bytes}`` of history.analyse_series over the prices stored in ``s3``."""
    needed, _ = history.canonical_keys(s3, CONFIG, start, end, rule_set.default_rule)
    prices = [analysis.parse_canonical_csv(s3.objects[key]) for key in needed]
    analysed = history.analyse_series(
        prices, start, end, rule_set.default_rule, notify_on_backfill, NOW, CONFIG.max_alert_age_minutes
    )
    return {w.slot: alerts.ledger_bytes(w.entry(rule_set.default_rule)) for w in analysed}


@st.composite
def histories(draw):
    """A price series with gaps (short and longer than any lookback), a sub-range and a rule_set."""
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
    return prices, T0 + layout.SLOT * first, T0 + layout.SLOT * last, rule_set, draw(st.booleans())


# ------------------------------------------------------------------ bulk analysis == per-window analysis


@PROPERTY
@given(case=histories())
def test_bulk_analysis_gives_every_window_the_ledger_bytes_of_its_own_run(case):
    prices, start, end, rule_set, notify_on_backfill = case

    assert bulk(seeded(prices), start, end, rule_set, notify_on_backfill) == per_window(
        seeded(prices), start, end, rule_set, notify_on_backfill
    )


@PROPERTY
@given(case=histories())
def test_backfill_history_leaves_the_ledger_the_live_runs_leave(case):
    prices, start, end, rule_set, notify_on_backfill = case
    live, backfilled = seeded(prices), seeded(prices)
    per_window(live, start, end, rule_set, notify_on_backfill)
    in_range = [slot for slot in prices if start <= slot < end]
    if not in_range:
        with pytest.raises(history.NoUsableWindow, match="no usable window"):
            history.backfill_history(backfilled, CONFIG, start, end, rule_set, notify_on_backfill, NOW)
        return

    summary = history.backfill_history(backfilled, CONFIG, start, end, rule_set, notify_on_backfill, NOW)

    # Due windows: a live run claims them (publishing) before publishing; without a publisher the bulk
    # run writes nothing for them.
    unclaimed = {k: v for k, v in live.under(layout.CHANGES_PREFIX).items() if b'"publishing"' not in v}
    assert backfilled.under(layout.CHANGES_PREFIX) == unclaimed
    assert summary["windows"] == len(layout.slots_between(start, end))
    assert summary["windows_seen"] == len(in_range)
    assert summary["missing"] == summary["windows"] - len(in_range)


def test_repeat_windows_suppress_a_continuing_move_in_bulk_as_in_the_live_run():
    prices = {T0 + layout.SLOT * i: value for i, value in enumerate([100.0, 102.0, 104.0, 102.0, 104.5])}
    rule_set = run_rules(threshold_pct=1.0, repeat_windows=2)

    decisions = [
        w.decision
        for w in history.analyse_series(
            [analysis.parse_canonical_csv(canonical_csv(s, v)) for s, v in prices.items()],
            T0,
            T0 + layout.SLOT * 5,
            rule_set.default_rule,
            True,
            NOW,
            15,
        )
    ]

    # the up breach at 4 is three windows after the last up alert (at 1): it alerts again
    assert decisions == ["no_previous_record", NOTIFY, "suppressed_cooldown", NOTIFY, NOTIFY]


def test_breaches_are_suppressed_as_backfill_with_the_live_reason_unless_notify_on_backfill():
    prices = [analysis.parse_canonical_csv(canonical_csv(T0 + layout.SLOT * i, v)) for i, v in enumerate([100, 105])]

    [_, off] = history.analyse_series(prices, T0, T0 + 2 * layout.SLOT, RULE, False, NOW, 15)
    [_, on] = history.analyse_series(prices, T0, T0 + 2 * layout.SLOT, RULE, True, NOW, 15)

    assert (off.decision, off.reason) == ("suppressed_backfill", "backfill run (notify_on_backfill is off)")
    assert on.decision == NOTIFY


def test_summary_counts_missing_windows_breaches_and_names_the_largest_moves():
    values = {0: 100.0, 1: 100.2, 3: 103.0, 4: 99.0}
    prices = [analysis.parse_canonical_csv(canonical_csv(T0 + layout.SLOT * i, v)) for i, v in values.items()]
    end = T0 + layout.SLOT * 6
    analysed = history.analyse_series(prices, T0, end, RULE, False, NOW, 15)

    summary = history.summarize(analysed, T0, end, quarantined=1)

    assert (summary["windows"], summary["windows_seen"], summary["missing"]) == (6, 4, 2)
    assert summary["missing_windows"] == ["2025-03-31T22:10:00Z", "2025-03-31T22:25:00Z"]
    assert summary["breaches"] == 2
    assert summary["quarantined"] == 1
    assert [m["window_start"] for m in summary["largest_moves"]] == [
        "2025-03-31T22:20:00Z",
        "2025-03-31T22:15:00Z",
        "2025-03-31T22:05:00Z",
    ]
    assert summary["largest_moves"][0]["change_pct"] == round((99.0 - 103.0) / 103.0 * 100, 4)


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
    notified_key = layout.ledger_key(T0 + layout.SLOT)
    entry = json.loads(s3.objects[notified_key])
    windows.record_notified(s3, CONFIG, entry, "message-1")
    notified = s3.objects[notified_key]
    changed_key = layout.ledger_key(T0 + 2 * layout.SLOT)
    s3.objects[changed_key] = b'{"decision": "below_threshold"}\n'
    s3.puts.clear()

    second = history.backfill_history(s3, CONFIG, T0, end, run_rules(), False, NOW)

    assert first["ledger"] == {"written": 4, "unchanged": 0, "kept_notified": 0, "kept_publishing": 0, "due": 0}
    assert second["ledger"] == {"written": 1, "unchanged": 2, "kept_notified": 1, "kept_publishing": 0, "due": 0}
    assert s3.objects[notified_key] == notified
    assert json.loads(s3.objects[notified_key])["decision"] == NOTIFIED
    assert [k for k in s3.puts if k.startswith(layout.CHANGES_PREFIX)] == [changed_key]


def test_an_entry_notified_between_listing_and_writing_is_kept():
    """The conditional write fails, the entry is read again and, being notified, left alone."""
    slot = T0 + layout.SLOT
    s3 = seeded({T0: 100.0, slot: 103.0})
    key = layout.ledger_key(slot)
    s3.objects[key] = b'{"decision": "suppressed_backfill"}\n'
    notified = json.dumps({"decision": NOTIFIED, "sns_message_id": "m"}).encode()
    real_get = s3.get_object

    def get_then_notify(Bucket, Key, **kwargs):  # noqa: N803
        response = real_get(Bucket=Bucket, Key=Key, **kwargs)
        if Key == key and s3.objects[key] != notified:
            s3.objects[key] = notified  # a live run publishes right after our read
        return response

    s3.get_object = get_then_notify

    counts = history.write_ledger(s3, CONFIG.bucket, layout.CHANGES_PREFIX, {key: b"new\n"}, slot, slot)

    assert counts == {"written": 0, "unchanged": 0, "kept_notified": 1, "kept_publishing": 0}
    assert s3.objects[key] == notified


def test_publish_due_sends_each_due_window_once_and_records_it_notified():
    prices = {T0 + layout.SLOT * i: v for i, v in enumerate([100.0, 103.0, 103.1, 99.0])}
    s3 = seeded(prices)
    sent = []

    def publish(alert):
        sent.append(alert["subject"])
        return f"message-{len(sent)}"

    end = T0 + layout.SLOT * 4
    first = history.backfill_history(s3, CONFIG, T0, end, run_rules(), True, NOW, publish, "http://ui/run")
    again = history.backfill_history(s3, CONFIG, T0, end, run_rules(), True, NOW, publish, "http://ui/run")

    assert first["notified"] == 2
    assert again["notified"] == 0
    assert sent == ["ETH/USDT up 3.00% in 5 min: 103.00", "ETH/USDT down 3.98% in 5 min: 99.0000"]
    entry = json.loads(s3.objects[layout.ledger_key(T0 + layout.SLOT)])
    assert (entry["decision"], entry["sns_message_id"]) == (NOTIFIED, "message-1")


# ------------------------------------------------------------------ Parquet


def month_rows(count: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        slot = utc(2025, 3, 1) + layout.SLOT * i
        rows.extend(history.canonical_rows(canonical_csv(slot, round(rng.uniform(90, 110), 6))))
    return rows


def test_parquet_bytes_are_the_same_for_the_same_rows_in_any_order():
    rows = month_rows(300)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)

    assert history.parquet_bytes(rows) == history.parquet_bytes(rows) == history.parquet_bytes(shuffled)
    assert history.parquet_bytes(rows) != history.parquet_bytes(rows[:-1])


def test_parquet_reads_back_with_the_canonical_columns_a_utc_timestamp_and_float64_numbers():
    rows = month_rows(5)
    rows[2]["quote_volume"] = None

    frame = pd.read_parquet(io.BytesIO(history.parquet_bytes(rows)))

    assert tuple(frame.columns) == layout.CANONICAL_COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2025-03-01T00:00:00Z")
    for column in history.FLOAT_COLUMNS:
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

    assert [(p["key"], p["rows"]) for p in first["parquet"]] == [(layout.parquet_key(2025, 4), 12)]
    assert [p["written"] for p in again["parquet"]] == [False]
    assert s3.puts == []
    frame = pd.read_parquet(io.BytesIO(s3.objects[layout.parquet_key(2025, 4)]))
    assert frame["timestamp"].min() == pd.Timestamp("2025-04-01T00:00:00Z")
    assert layout.parquet_key(2025, 3) not in s3.objects  # March is outside the range


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
    keys = [layout.ingestion_key(start + layout.SLOT * i, (".json", ".csv", ".x")[i % 3]) for i in range(48)]
    decoys = [
        layout.ingestion_key(start - layout.SLOT, ".json"),  # before the range
        layout.ingestion_key(end, ".json"),  # the end is excluded
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

    by_day = glue.list_raw_keys(s3, job_args(start, end))
    days_listed = len(listed)
    monkeypatch.setattr(glue, "LIST_BY_DAY_ABOVE_SLOTS", 10_000)
    by_window = glue.list_raw_keys(s3, job_args(start, end))

    assert by_day == by_window == sorted(keys)
    assert days_listed == 2
    assert len(listed) == 2 + 48


def test_a_range_run_writes_what_single_window_runs_write_and_quarantines_under_the_objects_window(moto_env):
    from local.feed import render, synthetic_record

    start = utc(2025, 3, 2, 0, 0)
    slots = [start + layout.SLOT * i for i in range(20)]
    bad_slot = slots[7]
    raw = {
        layout.ingestion_key(slot, f".{fmt}"): render(synthetic_record(slot), fmt)
        for slot, fmt in zip(slots, ["json", "csv", "xml", "txt"] * 5, strict=True)
        if slot != bad_slot
    }
    raw[layout.ingestion_key(bad_slot, ".json")] = b'{"date": %d, "weightedAverage": "NaN"}' % bad_slot.timestamp()

    def outputs(runs) -> dict:
        s3 = raw_bucket()
        for stale in s3.list_objects_v2(Bucket="raw").get("Contents", []):  # the same mock serves both calls
            s3.delete_object(Bucket="raw", Key=stale["Key"])
        for key, body in raw.items():
            s3.put_object(Bucket="raw", Key=key, Body=body)
        for first, last in runs:
            glue.run(s3, job_args(first, last))
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
    copy_key, reason_key = layout.quarantine_keys(bad_slot, layout.ingestion_key(bad_slot, ".json"))
    assert json.loads(one_run[reason_key])["window"] == layout.slot_stamp(bad_slot)
    assert copy_key in one_run
    assert sum(k.startswith(layout.ANALYSIS_PREFIX) for k in one_run) == 19


def test_listed_sizes_spare_the_head_request_and_still_refuse_an_oversized_object(moto_env):
    s3 = raw_bucket()
    slot = utc(2025, 3, 3, 12, 0)
    key = layout.ingestion_key(slot, ".json")
    s3.put_object(Bucket="raw", Key=key, Body=b"x" * 2048)
    args = job_args(slot, slot + layout.SLOT)
    args.max_object_bytes = 1024
    calls = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))

    summary = glue.run(s3, args)

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
    s3.objects[layout.range_objects_key(start, end)] = glue.range_objects(written)
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
    body = glue.range_objects(written)

    assert body == glue.range_objects(list(reversed(written)))
    assert [json.loads(line)["key"] for line in body.decode().splitlines()] == ["a.csv", "b.csv"]
    assert history.range_objects(MemoryS3({"r.jsonl": body}), "bucket", "r.jsonl") == dict(written)


@pytest.mark.parametrize(
    ("objects", "cpus", "processes"),
    [
        (1, 8, 1),
        (glue.PROCESSES_ABOVE_OBJECTS, 8, 1),
        (glue.PROCESSES_ABOVE_OBJECTS + 1, 2, 2),
        (8640, 64, 4),
        (8640, 1, 1),
    ],
)
def test_only_long_runs_spread_over_processes_one_per_cpu_up_to_the_cap(objects, cpus, processes):
    assert glue.worker_processes(objects, cpus) == processes


# ------------------------------------------------------------------ a window waits for earlier normalizations


def waiting_case():
    """Windows every 5 minutes from T0 with CSVs, except T0+15 min, whose raw record is there unnormalized."""
    prices = {T0 + layout.SLOT * i: 100.0 + (3.0 if i == 3 else 0.0) for i in range(6) if i != 3}
    s3 = seeded(prices)
    s3.objects[layout.ingestion_key(T0 + layout.SLOT * 3, ".json")] = b"{}"
    return s3, T0 + layout.SLOT * 4


def analyse(s3, slot, still_normalizing=None):
    rule_set = run_rules(1.0, 60, 0.0, 2)
    return windows.analyse_window(s3, CONFIG, slot, rule_set, False, "backfill", "", still_normalizing)


def test_a_window_waits_while_an_earlier_record_of_its_lookback_is_still_being_normalized():
    s3, slot = waiting_case()
    asked = []

    with pytest.raises(windows.WindowNotReady, match=layout.slot_stamp(T0 + layout.SLOT * 3)):
        analyse(s3, slot, lambda slots: asked.append(slots) or slots)

    assert asked == [[T0 + layout.SLOT * 3]]
    assert not s3.under(layout.CHANGES_PREFIX)  # nothing decided yet


def test_a_window_goes_on_when_the_earlier_normalization_has_finished_without_a_csv():
    s3, slot = waiting_case()

    result = analyse(s3, slot, lambda slots: [])

    assert result["entry"]["previous"]["timestamp"] == layout.iso(T0 + layout.SLOT * 2)


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
    assert history.reason_kind(one) == history.reason_kind(other)


def test_a_reason_kind_keeps_what_is_said_and_different_reasons_stay_apart():
    grammar = glue.GRAMMAR_REFUSED

    assert history.reason_kind(NO_WA) == NO_WA
    assert history.reason_kind(grammar) == grammar  # its '.', '-', '/' are the grammar, not values
    assert history.reason_kind("timestamp 2025-04-03T10:02:00+00:00 is not on a 5-minute boundary") == (
        "timestamp N is not on a 5-minute boundary"
    )
    assert history.reason_kind("open 'x' is not a number") != history.reason_kind("close 'x' is not a number")


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
    }


def test_the_ops_report_gives_the_counts_and_the_commonest_kinds_of_reason_most_first_with_an_example_each():
    notes = [note(n, NO_WA) for n in range(10)] + [
        note(10, "record 0: weighted_average is not finite: 'NaN'"),
        note(11, "record 0: weighted_average is not finite: 'inf'"),
        note(12, "high 1 is below low 2"),
    ]
    notes += [note(20 + n, f"reason number {chr(97 + n)}{chr(97 + n)} is rare") for n in range(4)]

    subject, message = history.quarantine_report(report_summary(17, 19), notes, "http://airflow/run")

    assert subject == "[price pipeline] Quarantined in range 2025-04-03T10:00Z..2025-04-03T11:05Z: 17 of 19 objects"
    lines = message.splitlines()
    assert lines[0] == (
        "The bulk analysis of 2025-04-03T10:00:00Z to 2025-04-03T11:05:00Z (end excluded) succeeded, but the Glue "
        "job quarantined 17 of 19 objects of the range: 2 of 13 windows have a usable record, 11 have none."
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

    _, message = history.quarantine_report(report_summary(1, 1), notes, "u")

    assert "<!channel>" not in message
    assert "\nReason: all fine" not in message
    assert "\nDAG: forged" not in message
    assert alerts.quoted(hostile_key) in message


def test_a_sample_of_the_reasons_is_said_to_be_one():
    _, message = history.quarantine_report(report_summary(900, 900), [note(0, NO_WA)], "u")

    assert "Commonest reasons (from the reason files of 1 of them, spread over the range):" in message


def test_the_report_reads_a_bounded_spread_of_reason_files_in_one_listing_and_is_none_without_quarantine(
    monkeypatch,
):
    start = utc(2025, 4, 3)
    end = start + layout.SLOT * 288
    s3 = MemoryS3()
    for n, slot in enumerate(layout.slots_between(start, end)):
        for copy in range(3):
            source = f"{layout.ingestion_key(slot, '.json')}{copy}"
            body = json.dumps({"source_key": source, "reason": NO_WA if n % 4 else "high 1 is below low 2"}).encode()
            s3.objects[layout.quarantine_keys(slot, source)[1]] = body
    s3.objects[layout.quarantine_keys(end, "after the range")[1]] = b"{}"
    reads = []
    real_get = s3.get_object
    monkeypatch.setattr(s3, "get_object", lambda **kwargs: reads.append(kwargs["Key"]) or real_get(**kwargs))
    monkeypatch.setattr(history, "QUARANTINE_NOTES_READ", 100)

    summary = report_summary(864, 864, 0, 288) | {"start": layout.iso(start), "end": layout.iso(end)}

    subject, message = history.report_quarantine(s3, CONFIG, summary, "u")

    assert subject.endswith(": 864 of 864 objects")
    assert len(reads) == len(set(reads)) == 96  # every 9th of 864
    assert {layout.slot_of_key(key).hour for key in reads} == set(range(24))
    assert "(from the reason files of 96 of them, spread over the range)" in message
    assert f'- 72 objects: "{NO_WA}"' in message
    assert '- 24 objects: "high N is below low N"' in message
    assert history.report_quarantine(s3, CONFIG, summary | {"quarantined": 0}, "u") is None


def test_an_object_used_for_its_window_and_quarantined_for_another_record_counts_once():
    slot = T0
    used, superseded, bad = (layout.ingestion_key(slot, suffix) for suffix in ("-v2.json", ".json", ".xml"))
    price = analysis.Price(slot, 100.0, "ETH/USDT", used, (superseded,))
    reason_keys = [layout.quarantine_keys(slot, key)[1] for key in (used, bad)]

    assert history.objects_seen(reason_keys, [price], layout.QUARANTINE_PREFIX) == 3


def test_an_earlier_window_with_another_pairs_record_only_is_asked_about_and_holds_nobody_once_normalized():
    """Only another pair's record in the gap: no pair is the clock (issue 19), so that window's run goes on
    at the deadline and normalizes it. An analysis asks whether a run can still do so (it did not ask,
    when that run waited for the default pair's record), and goes on when none can."""
    s3, slot = waiting_case()
    gap = T0 + layout.SLOT * 3
    del s3.objects[layout.ingestion_key(gap, ".json")]
    s3.objects[layout.ingestion_key(gap, ".json", pair="BTC/USDT")] = b"{}"
    asked = []

    result = analyse(s3, slot, lambda slots: asked.extend(slots) and [])

    assert asked == [gap]
    assert result["entry"]["previous"]["timestamp"] == layout.iso(T0 + layout.SLOT * 2)


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

    live = per_window(seeded(prices), start, end, rule_set, False)

    assert live == bulk(seeded(prices), start, end, rule_set, False)
    entry = json.loads(live[utc(2025, 3, 31, 23, 55)])
    assert (entry["decision"], entry["suppressed_by"]) == ("suppressed_cooldown", "2025-03-31T23:45:00Z")
