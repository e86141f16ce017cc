"""The window contract, through the real Glue job script on the stand-in (issue 11, points 1-6, 11, 12).

One range run (as the bulk DAG makes) over a day no other test uses, with one bad or tricky object per
window, then one assertion per rule; and live single-window runs for what only they show. Every rule
here failed before it was enforced in the job: a record of another window rewrote that window's CSV,
a foreign pair passed, ``0,086`` became 86, a year-0001 timestamp crashed the whole run, 5e-324 and
1e300 passed, the last key won over the newest object, conflicting aliases and duplicate records were
resolved silently, and a no-trade candle was quarantined.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import timedelta

import pytest

from include.price_pipeline import alerts, layout
from tests.conftest import utc
from tests.integration.test_standin import log_lines
from tests.records import candle

pytestmark = pytest.mark.integration

START = utc(2025, 9, 3, 0, 0)  # a day no other test writes
SLOTS = [START + layout.SLOT * i for i in range(14)]
LIVE = utc(2025, 9, 4, 12, 0)  # the live-run tests' day


def raw_key(slot, suffix: str = ".json") -> str:
    return layout.ingestion_key(slot, suffix, pair="ETH/USDT")


def stamp(slot) -> int:
    return int(slot.timestamp())


def no_trade_kline(slot, price: str) -> list:
    opened = stamp(slot) * 1000
    return [opened, price, price, price, price, "0", opened + 299_999, "0", 0, "0", "0", "0"]


def scenario() -> dict[str, str]:
    """One raw object (or two) per window of SLOTS, each showing one rule."""
    w = SLOTS
    forged = candle(w[0], 9999.0)
    return {
        raw_key(w[0]): json.dumps(candle(w[0], 3000.0)),
        # 1: an object under w1 that also holds a forged record of w0.
        raw_key(w[1]): json.dumps([forged, candle(w[1], 3001.0)]),
        # 2: a foreign pair.
        raw_key(w[2]): json.dumps({**candle(w[2], 3002.0), "pair": "BTC/USDT"}),
        # 3: semicolon text writes its decimals with a comma; in JSON a lone comma reads two ways.
        raw_key(w[3], ".csv"): f"date;high;low;weightedAverage\n{stamp(w[3])};0,087;0,085;0,086\n",
        raw_key(w[4]): json.dumps({"date": stamp(w[4]), "weightedAverage": "3,120"}),
        # 4: a timestamp in year 1 (it crashed the whole run), and one three days ahead.
        raw_key(w[5]): json.dumps({"date": "0001-01-01T00:00:00Z", "weightedAverage": 3005.0}),
        raw_key(w[6]): json.dumps(candle(w[6] + timedelta(days=3), 3006.0)),
        # 5: implausible prices without high/low.
        raw_key(w[7]): json.dumps({"date": stamp(w[7]), "weightedAverage": 5e-324}),
        raw_key(w[8]): json.dumps({"date": stamp(w[8]), "weightedAverage": 1e300}),
        # 6: two spellings of one field with different values; two records of one window in one object.
        raw_key(w[9]): json.dumps({**candle(w[9], 3009.0), "vwap": 3109.0}),
        raw_key(w[10]): json.dumps([candle(w[10], 3010.0), candle(w[10], 3110.0)]),
        # 11: an exchange maintenance candle: nothing traded, one price.
        raw_key(w[11]): json.dumps(no_trade_kline(w[11], "3011.5")),
        # 13: a good window, to show the run goes on.
        raw_key(w[13]): json.dumps(candle(w[13], 3013.0)),
    }


@pytest.fixture(scope="module")
def range_run(standin, aws_session):
    aws = aws_session
    for key, body in scenario().items():
        aws.put(key, body)
    # 6: a correction written after the original; its key sorts before the original's ('-' < '.').
    aws.put(raw_key(SLOTS[12]), json.dumps(candle(SLOTS[12], 3012.0)))
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    aws.put(raw_key(SLOTS[12], "-v2.csv"), f"date,weightedAverage\n{stamp(SLOTS[12])},3012.5\n")
    window = {"--window_start": layout.iso(START), "--window_end": layout.iso(SLOTS[-1] + layout.SLOT)}
    run = aws.run_real_glue_job(window)
    return aws, run


def canonical(aws, slot, pair: str = "ETH/USDT") -> dict:
    """``pair``'s one row of the window's canonical CSV."""
    [row] = [
        row for row in csv.DictReader(io.StringIO(aws.get(layout.analysis_key(slot)).decode())) if row["pair"] == pair
    ]
    return row


def has_csv(aws, slot) -> bool:
    return layout.analysis_key(slot) in aws.keys(layout.analysis_key(slot))


def reason(aws, slot, key) -> str:
    return json.loads(aws.get(layout.quarantine_keys(slot, key)[1]))["reason"]


def output(aws, run) -> list[str]:
    """The run's stdout lines in CloudWatch."""
    return log_lines(aws.client("logs"), "output", run["Id"])


def test_the_range_run_succeeds_whatever_its_objects_hold(range_run):
    _aws, run = range_run
    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")


def test_1_an_object_writes_only_its_own_windows_csv_and_other_slots_are_quarantined(range_run):
    aws, _run = range_run
    assert float(canonical(aws, SLOTS[0])["weighted_average"]) == 3000.0  # not the forged 9999
    assert canonical(aws, SLOTS[0])["source_key"] == raw_key(SLOTS[0])
    assert float(canonical(aws, SLOTS[1])["weighted_average"]) == 3001.0
    assert "found under window" in reason(aws, SLOTS[1], raw_key(SLOTS[1]))


def test_2_a_record_naming_another_pair_is_quarantined(range_run):
    aws, _run = range_run
    assert not has_csv(aws, SLOTS[2])
    assert "names pair 'BTC/USDT', not the configured ETH/USDT" in reason(aws, SLOTS[2], raw_key(SLOTS[2]))


def test_3_a_comma_decimal_is_read_as_such_and_an_ambiguous_one_is_quarantined(range_run):
    aws, _run = range_run
    assert float(canonical(aws, SLOTS[3])["weighted_average"]) == 0.086  # was 86.0
    assert not has_csv(aws, SLOTS[4])
    assert "'3,120' is ambiguous" in reason(aws, SLOTS[4], raw_key(SLOTS[4]))


def test_4_implausible_timestamps_are_quarantined_not_fatal(range_run):
    aws, _run = range_run
    assert "is before 2009" in reason(aws, SLOTS[5], raw_key(SLOTS[5]))
    assert "more than a day after window" in reason(aws, SLOTS[6], raw_key(SLOTS[6]))
    assert not has_csv(aws, SLOTS[6] + timedelta(days=3))
    assert float(canonical(aws, SLOTS[13])["weighted_average"]) == 3013.0


def test_5_implausible_prices_are_quarantined(range_run):
    aws, _run = range_run
    for slot in SLOTS[7:9]:
        assert not has_csv(aws, slot)
        assert "outside the plausible prices" in reason(aws, slot, raw_key(slot))


def test_6_conflicting_aliases_and_duplicate_records_are_quarantined(range_run):
    aws, _run = range_run
    assert not has_csv(aws, SLOTS[9])
    assert "weighted_average given twice with different values" in reason(aws, SLOTS[9], raw_key(SLOTS[9]))
    assert not has_csv(aws, SLOTS[10])
    assert "2 records of window" in reason(aws, SLOTS[10], raw_key(SLOTS[10]))


def test_6_the_newest_object_wins_and_the_csv_and_run_log_name_the_one_it_superseded(range_run):
    aws, run = range_run
    row = canonical(aws, SLOTS[12])
    assert (float(row["weighted_average"]), row["source_key"]) == (3012.5, raw_key(SLOTS[12], "-v2.csv"))
    assert json.loads(row["superseded"]) == [raw_key(SLOTS[12])]
    logged = f"SUPERSEDED in window {layout.slot_stamp(SLOTS[12])}: {alerts.quoted(raw_key(SLOTS[12]))}"
    assert any(line.startswith(logged) for line in output(aws, run))


def test_11_a_no_trade_candle_has_its_one_price_as_weighted_average_marked_so(range_run):
    aws, _run = range_run
    row = canonical(aws, SLOTS[11])
    assert (float(row["weighted_average"]), row["weighted_average_basis"]) == (3011.5, "no_trade")


def test_12_the_job_leaves_every_raw_object_as_the_producer_wrote_it(range_run):
    """No request per raw object beyond its GET (a tag cost one per pair and window): the lifecycle expires
    raw objects by age, and the quarantine copy holds what a refused one gave."""
    aws, _run = range_run
    raw = aws.keys(layout.INGESTION_PREFIX + layout.partition(START))
    assert len(raw) == 15
    for key in raw:
        versions = aws.s3.list_object_versions(Bucket=aws.config.bucket, Prefix=key)["Versions"]
        assert [v["Key"] for v in versions] == [key], key
        assert aws.s3.get_object_tagging(Bucket=aws.config.bucket, Key=key)["TagSet"] == [], key
    copy_key, _ = layout.quarantine_keys(SLOTS[2], raw_key(SLOTS[2]))
    assert (
        aws.s3.get_object(Bucket=aws.config.bucket, Key=copy_key)["Body"].read()
        == aws.s3.get_object(Bucket=aws.config.bucket, Key=raw_key(SLOTS[2]))["Body"].read()
    )


# ------------------------------------------------------------------ live single-window runs


def test_1_a_live_run_never_rewrites_an_earlier_windows_csv(aws):
    before, window = LIVE - layout.SLOT, LIVE
    aws.put(raw_key(before), json.dumps(candle(before, 3000.0)))
    assert aws.run_real_glue_job({"--window_start": layout.iso(before)})["JobRunState"] == "SUCCEEDED"
    earlier_csv = aws.get(layout.analysis_key(before))
    aws.put(raw_key(window), json.dumps([candle(before, 9999.0), candle(window, 3001.0)]))

    run = aws.run_real_glue_job({"--window_start": layout.iso(window)})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    assert aws.get(layout.analysis_key(before)) == earlier_csv
    assert float(canonical(aws, window)["weighted_average"]) == 3001.0
    assert "found under window" in reason(aws, window, raw_key(window))
