"""A long Glue range run spreads its objects over processes and writes exactly what one process writes.

On the stand-in (a real server): the worker processes build their own S3 clients from the environment,
as the job does on Glue, so the test points the environment at the stand-in.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from include.glue.price_glue import job
from include.price_pipeline import layout, settings
from local.feed import render, synthetic_record
from local.standin import aws_env
from tests.conftest import STANDIN_CREDENTIALS, utc

pytestmark = pytest.mark.integration

START = utc(2025, 8, 14, 0, 0)  # a day no other test writes
WINDOWS = 40
PAIRS = "ETH/USDT,BTC/USDT"


def job_args(config: settings.Config, analysis_prefix: str, quarantine_prefix: str, start=START, windows=WINDOWS,
             pairs: str = ""):  # fmt: skip
    arguments = (
        settings.glue_job_arguments(config)
        | ({"--pairs": pairs} if pairs else {})
        | {
            "--analysis_prefix": analysis_prefix,
            "--quarantine_prefix": quarantine_prefix,
            "--window_start": layout.iso(start),
            "--window_end": layout.iso(start + layout.SLOT * windows),
        }
    )
    return job.parse_args([item for pair in arguments.items() for item in pair])


def test_a_long_range_run_spread_over_processes_writes_what_one_process_writes(standin, aws, monkeypatch):
    slots = layout.slots_between(START, START + layout.SLOT * WINDOWS)
    for index, slot in enumerate(slots):
        fmt = ("json", "csv", "xml", "txt")[index % 4]
        aws.put(layout.ingestion_key(slot, f".{fmt}", pair="ETH/USDT"), render(synthetic_record(slot), fmt))
    aws.put(layout.ingestion_key(slots[9], ".bad.json", pair="ETH/USDT"), b'{"date": "soon", "weightedAverage": -1}')
    for name, value in aws_env(standin, STANDIN_CREDENTIALS).items():
        monkeypatch.setenv(name, value)
    pools = []

    class CountingPool(ProcessPoolExecutor):
        def __init__(self, max_workers):
            pools.append(max_workers)
            # Fresh interpreters, not forks: a fork of a threaded pytest-xdist worker can hang on a lock
            # (Glue runs the job alone in its process, where the default fork is safe).
            super().__init__(max_workers, mp_context=multiprocessing.get_context("spawn"))

    monkeypatch.setattr(job, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(job, "PROCESSES_ABOVE_OBJECTS", 10)
    monkeypatch.setattr(job, "MAX_PROCESSES", 3)
    monkeypatch.setattr(job.os, "cpu_count", lambda: 8)

    outputs = {}
    for name, spread in (("one", False), ("spread", True)):
        analysis, quarantine = f"tests/glue-range/{name}/analysis/", f"tests/glue-range/{name}/quarantine/"
        summary = job.run(aws.s3, job_args(aws.config, analysis, quarantine), spread=spread)
        written = {**aws.snapshot(analysis), **aws.snapshot(quarantine)}
        outputs[name] = (
            summary,
            {key.replace(f"/{name}/", "/"): body.replace(f"/{name}/".encode(), b"/") for key, body in written.items()},
        )

    (one_summary, one), (spread_summary, spread) = outputs["one"], outputs["spread"]
    assert pools == [3, 3]  # reads, then writes, each from three processes
    assert spread == one
    assert {k: v for k, v in spread_summary.items() if k != "range_objects_key"} == {
        k: v for k, v in one_summary.items() if k != "range_objects_key"
    }
    assert spread_summary["rows"] == WINDOWS
    assert len(spread_summary["quarantined"]) == 1
    range_key = layout.range_objects_key(START, START + layout.SLOT * WINDOWS, "tests/glue-range/analysis/")
    lines = [json.loads(line) for line in spread[range_key].decode().splitlines()]
    assert [line["key"] for line in lines] == sorted(k for k in spread if k.endswith(".csv"))
    assert all(spread[line["key"]] == line["body"].encode() for line in lines)


def test_a_range_run_reads_no_canonical_csv_it_creates_and_rewrites_none_it_would_leave_unchanged(aws):
    """Issue 37: the range run read every window's pairs.csv before its conditional write (a 404 on a first
    run: 8,640 GETs a month of history); a day's LIST gives each key's ETag. A second run over the same
    records writes nothing; a CSV holding another pair's row as well is read and merged, that row kept."""
    start = utc(2025, 8, 15, 0, 0)  # a day no other test writes
    slots = layout.slots_between(start, start + layout.SLOT * WINDOWS)
    analysis, quarantine = "tests/glue-range/requests/analysis/", "tests/glue-range/requests/quarantine/"
    eth = layout.ingestion_key(slots[5], ".json", pair="ETH/USDT")
    aws.put(eth, render(synthetic_record(slots[5]), "json"))
    job.run(aws.s3, job_args(aws.config, analysis, quarantine, slots[5], 1, PAIRS))  # the window's CSV: ETH's row
    aws.s3.delete_object(Bucket=aws.config.bucket, Key=eth)
    merged_key = layout.analysis_key(slots[5], analysis)
    for slot in slots:
        aws.put(layout.ingestion_key(slot, ".json", pair="BTC/USDT"), render(synthetic_record(slot), "json"))
    calls: list[tuple[str, str]] = []

    def count(params, model, **_):
        if params.get("Key", "").startswith(analysis) and params["Key"].endswith("pairs.csv"):
            calls.append((model.name, params["Key"]))

    aws.s3.meta.events.register("provide-client-params.s3", count)
    try:
        job.run(aws.s3, job_args(aws.config, analysis, quarantine, start, pairs=PAIRS))
        first = list(calls)
        calls.clear()
        job.run(aws.s3, job_args(aws.config, analysis, quarantine, start, pairs=PAIRS))
    finally:
        aws.s3.meta.events.unregister("provide-client-params.s3", count)

    assert [key for name, key in first if name == "GetObject"] == [merged_key]
    assert len([1 for name, _ in first if name == "PutObject"]) == WINDOWS
    assert [key for name, key in calls if name == "PutObject"] == []  # nothing to change: nothing written
    assert b"ETH/USDT" in aws.get(merged_key)  # the row of a pair this run did not re-derive is kept
    assert b"BTC/USDT" in aws.get(merged_key)
