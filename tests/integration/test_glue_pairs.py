"""Many pairs through the real Glue job script on the stand-in: one run of a window normalizes every
configured pair's object (the default pair under its single-pair key, the others in the window folder):
the default pair to its own CSV, the others to one shared CSV with a row each; it quarantines an object
whose key or record names a pair it is not for."""

from __future__ import annotations

import csv
import io
import json

import pytest

from include.price_pipeline import layout
from tests.conftest import utc
from tests.records import candle

pytestmark = pytest.mark.integration

WINDOW = utc(2025, 9, 6, 8, 0)  # a day no other test writes
PAIRS = "ETH/USDT,BTC/USDT,SOL/USDT"  # the default pair first, as settings.glue_job_arguments lists them


def rows(aws, key: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(aws.get(key).decode())))


def test_one_run_writes_every_pairs_csv_and_quarantines_what_names_another_pair(aws):
    key = lambda pair, ext=".json": layout.ingestion_key(WINDOW, ext, pair=pair)  # noqa: E731
    aws.put(key("ETH/USDT"), json.dumps(candle(WINDOW, 3000.0)))
    aws.put(key("BTC/USDT"), json.dumps({**candle(WINDOW, 90000.0), "pair": "BTC_USDT"}))
    aws.put(key("SOL/USDT", ".csv"), f"date,weightedAverage\n{int(WINDOW.timestamp())},150.5\n")
    aws.put(key("DOGE/USDT"), json.dumps(candle(WINDOW, 0.2)))  # not configured
    aws.put(key("SOL/USDT", "-misfiled.json"), json.dumps({**candle(WINDOW, 151.0), "pair": "ETH/USDT"}))  # wrong pair

    run = aws.run_real_glue_job({"--window_start": layout.iso(WINDOW), "--pairs": PAIRS})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    btc, eth, sol = rows(aws, layout.analysis_key(WINDOW))  # one row per pair, the default one too, by pair
    assert (eth["pair"], float(eth["weighted_average"])) == ("ETH/USDT", 3000.0)
    assert (btc["pair"], float(btc["weighted_average"]), btc["source_key"]) == ("BTC/USDT", 90000.0, key("BTC/USDT"))
    assert (sol["pair"], float(sol["weighted_average"]), sol["source_key"]) == (
        "SOL/USDT",
        150.5,
        key("SOL/USDT", ".csv"),
    )
    written = aws.keys(layout.ANALYSIS_PREFIX + layout.partition(WINDOW))
    assert written == [layout.analysis_key(WINDOW)]
    reasons = {}
    for reason_key in aws.keys(layout.quarantine_window_prefix(WINDOW)):
        if reason_key.endswith(".reason.json"):
            note = json.loads(aws.get(reason_key))
            reasons[note["source_key"]] = note["reason"]
    assert reasons.keys() == {key("DOGE/USDT"), key("SOL/USDT", "-misfiled.json")}
    assert (
        "key names pair DOGE/USDT, not one of the configured pairs (ETH/USDT, BTC/USDT, SOL/USDT)"
        in reasons[key("DOGE/USDT")]
    )
    assert "record names pair 'ETH/USDT', not the configured SOL/USDT" in reasons[key("SOL/USDT", "-misfiled.json")]
    raws = (
        key("ETH/USDT"),
        key("BTC/USDT"),
        key("SOL/USDT", ".csv"),
        key("DOGE/USDT"),
        key("SOL/USDT", "-misfiled.json"),
    )
    for raw in raws:  # left as the producer wrote them: the lifecycle expires raw objects by age
        assert aws.s3.get_object_tagging(Bucket=aws.config.bucket, Key=raw)["TagSet"] == []


def test_a_producers_legacy_alias_is_the_default_pairs_row_of_the_one_csv(aws):
    """A producer that still writes ``<slot><ext>`` breaks nothing: its record is the default pair's row."""
    window = WINDOW + layout.SLOT
    alias = layout.legacy_ingestion_key(window, ".json")
    aws.put(alias, json.dumps(candle(window, 3000.0)))
    aws.put(layout.ingestion_key(window, ".json", pair="BTC/USDT"), json.dumps(candle(window, 90000.0)))

    run = aws.run_real_glue_job({"--window_start": layout.iso(window), "--pairs": PAIRS})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    btc, eth = rows(aws, layout.analysis_key(window))
    assert (eth["pair"], float(eth["weighted_average"]), eth["source_key"]) == ("ETH/USDT", 3000.0, alias)
    assert btc["pair"] == "BTC/USDT"
    assert layout.legacy_analysis_key(window) not in aws.keys(layout.legacy_analysis_key(window))
