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


def job_args(config: settings.Config, analysis_prefix: str, quarantine_prefix: str):
    arguments = settings.glue_job_arguments(config) | {
        "--analysis_prefix": analysis_prefix,
        "--quarantine_prefix": quarantine_prefix,
        "--window_start": layout.iso(START),
        "--window_end": layout.iso(START + layout.SLOT * WINDOWS),
    }
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
