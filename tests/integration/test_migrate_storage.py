"""``make migrate-storage`` on the stand-in: a bucket written in the shapes of before one storage shape (the
default pair's ``<slot><ext>``, ``<slot>.csv`` and Parquet without ``pair=``, beside the other pairs' shapes
and the ledger) is migrated once; a second run changes nothing; the page, the bulk analysis, the live
analysis and the Athena table's location find every window as before."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from datetime import UTC, datetime

import pytest

from include.glue.price_glue import validation
from include.price_pipeline import analysis, browse, history, layout, ledger, parquet, rules
from local.standin import aws_env
from tests.conftest import ROOT, STANDIN_CREDENTIALS, utc
from tests.records import candle, seed_pairs

pytestmark = pytest.mark.integration

START = utc(2025, 10, 8, 12, 0)  # a day no other test writes
SLOTS = [START + layout.SLOT * i for i in range(6)]
ETH = {slot: 3000.0 + 40 * i for i, slot in enumerate(SLOTS)}  # +1.3 % a window: the 5-minute rule fires
BTC = {slot: 90000.0 + i for i, slot in enumerate(SLOTS)}
RULES = rules.parse({"default_pair": "ETH/USDT", "pairs": {
    "ETH/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "tolerance_minutes": 55}],
    "BTC/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "tolerance_minutes": 55}]}})  # fmt: skip
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())


def make(aws, target: str) -> str:
    env = {**os.environ, **aws_env(aws.url, STANDIN_CREDENTIALS)}
    done = subprocess.run(["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def old_bucket(aws) -> dict[datetime, bytes]:
    """Today's shapes: raw of both shapes, the default pair's <slot>.csv (one window also has the others'
    pairs.csv, one not), Parquet of both layouts, and each window's ledger object as the runs wrote it."""
    old_csvs = {}
    for slot in SLOTS:
        alias = layout.legacy_ingestion_key(slot, ".json")
        aws.put(alias, json.dumps(candle(slot, ETH[slot])))
        aws.put(layout.ingestion_key(slot, ".json", pair="BTC/USDT"), json.dumps(candle(slot, BTC[slot])))
        row = validation.normalize(candle(slot, ETH[slot]), ALIASES, "ETH/USDT", alias, "json")
        old_csvs[slot] = validation.to_csv(row)
        aws.put(layout.legacy_analysis_key(slot), old_csvs[slot])
        if slot != SLOTS[2]:  # a window whose other pairs had no record: no pairs.csv before the migration
            seed_pairs(aws.s3, aws.config.bucket, slot, {"BTC/USDT": BTC[slot]})
    months = {"ETH/USDT": [], "BTC/USDT": []}
    for slot in SLOTS:
        months["ETH/USDT"] += parquet.canonical_rows(old_csvs[slot])
        if slot != SLOTS[2]:
            months["BTC/USDT"] += [r for r in parquet.canonical_rows(aws.get(layout.analysis_key(slot)))]
    aws.put(layout.legacy_parquet_key(2025, 10), parquet.parquet_bytes(months["ETH/USDT"]))
    aws.put(layout.parquet_key(2025, 10, "BTC/USDT"), parquet.parquet_bytes(months["BTC/USDT"]))
    series = {
        "ETH/USDT": rules.Series([analysis.parse_canonical_csv(old_csvs[s]) for s in SLOTS]),
        "BTC/USDT": rules.Series(
            [p for s in SLOTS if s != SLOTS[2] for p in analysis.parse_canonical_rows(aws.get(layout.analysis_key(s)))]
        ),  # fmt: skip
    }
    for slot in SLOTS:
        by_pair = {}
        for pair, rule_list in RULES.pairs.items():
            if series[pair].at(slot) is not None:
                decided = {r.name: rules.evaluate(r, series[pair], slot) for r in rule_list}
                by_pair[pair] = ledger.pair_entry(pair, slot, series[pair].at(slot), rule_list, decided, False, "old")
        aws.put(layout.pairs_ledger_key(slot), ledger.entries_bytes(by_pair))
    return old_csvs


def test_make_migrate_storage_moves_the_default_pairs_csvs_and_parquet_once_and_every_window_reads_as_before(aws):
    old_csvs = old_bucket(aws)
    end = SLOTS[-1] + layout.SLOT
    page_before = {pair: browse.history(aws.s3, aws.config, RULES, START, end, pair) for pair in RULES.pairs}

    first = make(aws, "migrate-storage")

    assert "6 csv_moved" in first
    assert "1 parquet_moved" in first
    assert "nothing to move" in make(aws, "migrate-storage")  # a second run changes nothing
    day = aws.keys(layout.ANALYSIS_PREFIX + layout.partition(START))
    assert [key for key in day if key.endswith("Z.csv")] == []  # no <slot>.csv is left
    for slot in SLOTS:
        rows = {price.pair: price for price in analysis.parse_canonical_rows(aws.get(layout.analysis_key(slot)))}
        assert set(rows) == ({"ETH/USDT"} if slot == SLOTS[2] else {"ETH/USDT", "BTC/USDT"})
        assert rows["ETH/USDT"] == analysis.parse_canonical_csv(old_csvs[slot])  # the row as it was, no loss
    month_key = layout.parquet_key(2025, 10, "ETH/USDT")
    assert layout.legacy_parquet_key(2025, 10) not in aws.keys(layout.PARQUET_PREFIX)

    # The page: the ledger's rows as before, and the Parquet prices of every window under pair=ETH_USDT.
    assert {pair: browse.history(aws.s3, aws.config, RULES, START, end, pair) for pair in RULES.pairs} == page_before
    eth = browse.parquet_prices(aws.s3, aws.config, START, SLOTS[-1], "ETH/USDT")
    assert [(p.slot, p.weighted_average) for p in eth] == sorted(ETH.items())

    # The bulk analysis: every window of both pairs, Parquet rewritten to what the migration left.
    summary = history.backfill_history(aws.s3, aws.config, START, end, RULES, False, datetime.now(UTC))
    assert (summary["pairs"]["ETH/USDT"]["windows"], summary["pairs"]["BTC/USDT"]["windows"]) == (6, 5)
    assert summary["missing"] == 0
    migrated = {row["timestamp"] for row in _rows(aws.get(month_key))}
    assert {moment for moment in migrated if START <= moment < end} == set(SLOTS)  # the month holds other tests' days

    # The live analysis of the next window reads the default pair's migrated row as its reference.
    after = end
    seed_pairs(aws.s3, aws.config.bucket, after, {"ETH/USDT": ETH[SLOTS[-1]], "BTC/USDT": 90010.0})
    result = ledger.analyse_pairs(aws.s3, aws.config, RULES, after, False, "old", "u", "r")
    entry = ledger.parse_entries(aws.get(layout.pairs_ledger_key(after)))["ETH/USDT"]
    assert result["late"] == {}
    assert entry["rules"]["move-5m"]["reference"]["timestamp"] == layout.iso(SLOTS[-1])

    # Athena: the Parquet table's location template, for the default pair's slug, is the migrated object's.
    catalog = (ROOT / "terraform" / "catalog.tf").read_text()
    table = catalog[catalog.index('resource "aws_glue_catalog_table" "analysis_parquet"') :]
    template = re.search(r'"storage.location.template" = "\$\{local.s3_root\}\$\{local.parquet_prefix\}([^"]+)"', table)
    location = template.group(1).replace("$${pair}", "ETH_USDT").replace("$${year}", "2025").replace("$${month}", "10")
    assert month_key == layout.PARQUET_PREFIX + location + layout.PARQUET_FILE_NAME


def _rows(body: bytes) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(body)).to_pylist()
