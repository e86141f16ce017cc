"""Once per (pair, rule, window) on the stand-in's S3 (which enforces If-Match / If-None-Match like S3):
the claim of a pair's window, its rules published in parallel, retries and other runs."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from include.glue import normalize_price_record as job
from include.price_pipeline import layout, pairs, rules
from include.price_pipeline.windows import AlreadyNotified, ClaimLeft, ClaimLost
from tests.conftest import utc
from tests.records import candle

pytestmark = pytest.mark.integration

W = utc(2025, 9, 8, 12, 0)  # a day no other test writes
RULES = rules.parse(
    {
        "default_pair": "ETH/USDT",
        "pairs": {
            "ETH/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "tolerance_minutes": 55}],
            "BTC/USDT": [
                {"name": "move-5m", "kind": "change", "threshold_pct": 1.0},
                {"name": "cross-100k", "kind": "crossing", "level": 100000},
                {"name": "move-1h", "kind": "change", "threshold_pct": 1.0, "minutes": 60},
            ],
        },
    }
)
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())


def seed(aws, slot, price):
    row = job.normalize(candle(slot, price), ALIASES, "BTC/USDT", "k", "json")
    aws.s3.put_object(Bucket=aws.config.bucket, Key=layout.analysis_key(slot, pair="BTC/USDT"), Body=job.to_csv(row))


def entry(aws) -> dict:
    return json.loads(aws.get(layout.ledger_key(W, pair="BTC/USDT")))


def test_a_pairs_due_rules_are_claimed_once_and_each_published_once(aws):
    seed(aws, W - layout.SLOT, 99000.0)
    seed(aws, W, 101000.0)  # +2.02 % over 5 min and crosses 100k; no record an hour earlier
    analyse = lambda run: pairs.analyse_pairs(aws.s3, aws.config, RULES, W, True, "", "url", run)  # noqa: E731

    first = analyse("dag/run-a")
    assert sorted(a["rule"] for a in first["alerts"]) == ["cross-100k", "move-5m"]
    assert first["decisions"]["BTC/USDT"]["move-1h"] == "no_previous_record"
    assert entry(aws)["decision"] == "publishing"
    assert entry(aws)["claimed_by"] == "dag/run-a"
    assert analyse("dag/run-b")["alerts"] == []  # another run finds the claim
    assert len(analyse("dag/run-a")["alerts"]) == 2  # a retry of the claimant keeps its claim

    with pytest.raises(ClaimLost):
        pairs.start_publish(aws.s3, aws.config, W, "BTC/USDT", "move-5m", "dag/run-b")

    def publish(rule):  # the two mapped publish tasks at once: each conditional write may lose and retry
        pairs.start_publish(aws.s3, aws.config, W, "BTC/USDT", rule, "dag/run-a")
        return pairs.record_notified(aws.s3, aws.config, W, "BTC/USDT", rule, f"msg-{rule}", "dag/run-a")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(publish, ["move-5m", "cross-100k"]))
    done = entry(aws)
    assert done["decision"] == "notified"
    assert "claimed_by" not in done
    assert {name: r["sns_message_id"] for name, r in done["rules"].items()} == {
        "move-5m": "msg-move-5m",
        "cross-100k": "msg-cross-100k",
        "move-1h": None,
    }
    with pytest.raises(AlreadyNotified):
        pairs.start_publish(aws.s3, aws.config, W, "BTC/USDT", "move-5m", "dag/run-a")
    assert analyse("dag/run-c")["alerts"] == []


def test_a_publish_started_and_never_recorded_is_not_sent_again(aws):
    slot = W + layout.SLOT * 24
    seed(aws, slot - layout.SLOT, 99000.0)
    seed(aws, slot, 99500.0)  # +0.5 %: only... no rule; then a crossing
    seed(aws, slot + layout.SLOT, 100100.0)
    result = pairs.analyse_pairs(aws.s3, aws.config, RULES, slot + layout.SLOT, True, "", "url", "dag/run-x")
    assert [a["rule"] for a in result["alerts"]] == ["cross-100k"]
    pairs.start_publish(aws.s3, aws.config, slot + layout.SLOT, "BTC/USDT", "cross-100k", "dag/run-x")
    # the worker dies here, after starting the publish; the retry:
    with pytest.raises(ClaimLeft, match="may have sent the alert"):
        pairs.start_publish(aws.s3, aws.config, slot + layout.SLOT, "BTC/USDT", "cross-100k", "dag/run-x")


def test_a_backfill_records_a_firing_rule_as_suppressed_and_a_missing_pair_as_late(aws):
    slot = W + layout.SLOT * 48
    seed(aws, slot - layout.SLOT, 99000.0)
    seed(aws, slot, 101000.0)
    result = pairs.analyse_pairs(aws.s3, aws.config, RULES, slot, False, "backfill run", "url", "dag/bf")
    assert result["alerts"] == []
    stored = json.loads(aws.get(layout.ledger_key(slot, pair="BTC/USDT")))
    assert stored["decision"] == "analysed"
    assert stored["rules"]["move-5m"]["decision"] == "suppressed_backfill"
    assert stored["rules"]["move-5m"]["reason"] == "backfill run"
    later = pairs.analyse_pairs(aws.s3, aws.config, RULES, slot + layout.SLOT * 3, True, "", "url", "dag/live")
    assert later["late"] == {"BTC/USDT": "no record of the window when it was analysed"}
    assert "- BTC/USDT: no record of the window" in pairs.late_notice(slot, later["late"], "url")


def test_a_windows_first_analysis_reads_only_the_records_its_rules_decide_from_and_no_ledger_entry(aws):
    slot = W + layout.SLOT * 96
    move = {"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "tolerance_minutes": 55}
    five = rules.parse({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [move], "BTC/USDT": [move]}})
    for back in range(12, -1, -1):  # an hour of records: the rule's whole look-back
        seed(aws, slot - layout.SLOT * back, 99000.0 + back)
    reads: list[str] = []

    def count(params, **_):
        reads.append(params["Key"])

    event = "provide-client-params.s3.GetObject"
    aws.s3.meta.events.register(event, count)
    try:
        result = pairs.analyse_pairs(aws.s3, aws.config, five, slot, True, "", "url", "dag/run-r")
    finally:
        aws.s3.meta.events.unregister(event, count)

    assert result["decisions"] == {"BTC/USDT": {"move-5m": "below_threshold"}}
    assert sorted(reads) == sorted(layout.analysis_key(s, pair="BTC/USDT") for s in (slot - layout.SLOT, slot))
    assert json.loads(aws.get(layout.ledger_key(slot, pair="BTC/USDT")))["decision"] == "analysed"


def test_the_bulk_backfill_writes_each_pairs_entries_as_a_backfill_run_does_and_parquet_per_pair(aws):
    from datetime import datetime

    from include.price_pipeline import history
    from include.price_pipeline.analysis import Policy
    from tests.records import seed_normalized

    start = utc(2025, 9, 10, 6, 0)  # a day no other test writes
    slots = [start + layout.SLOT * i for i in range(6)]
    for i, slot in enumerate(slots):
        seed_normalized(aws.s3, aws.config.bucket, candle(slot, 3000.0 + i))
        seed(aws, slot, (99000.0, 99500.0, 100500.0, 100600.0, 99800.0, 103000.0)[i])

    summary = history.backfill_history(
        aws.s3, aws.config, slots[1], slots[-1] + layout.SLOT, Policy(), False, datetime.now().astimezone(),
        rule_set=RULES,
    )  # fmt: skip

    month = aws.keys(layout.month_analysis_prefix(2025, 9))
    by_pair = [layout.pair_of_analysis_key(key) for key in month]
    assert summary["parquet"][0]["rows"] == by_pair.count("")  # the default pair's month: its rows only
    btc = summary["pairs"]["BTC/USDT"]
    assert btc["windows"] == 5
    assert btc["parquet"][0]["rows"] == by_pair.count("BTC/USDT") > 6
    assert btc["parquet"][0]["key"] == layout.parquet_key(2025, 9, pair="BTC/USDT")
    bulk = {slot: aws.get(layout.ledger_key(slot, pair="BTC/USDT")) for slot in slots[1:]}
    decisions = [json.loads(body)["rules"]["cross-100k"]["decision"] for body in bulk.values()]
    assert decisions == [
        "not_crossed",
        "suppressed_backfill",
        "not_crossed",
        "suppressed_backfill",
        "suppressed_backfill",
    ]
    for slot in slots[1:]:  # what a native backfill run of the window writes: the same bytes
        aws.s3.delete_object(Bucket=aws.config.bucket, Key=layout.ledger_key(slot, pair="BTC/USDT"))
        pairs.analyse_pairs(
            aws.s3, aws.config, RULES, slot, False, "backfill run (notify_on_backfill is off)", "u", "r"
        )
        assert aws.get(layout.ledger_key(slot, pair="BTC/USDT")) == bulk[slot]
