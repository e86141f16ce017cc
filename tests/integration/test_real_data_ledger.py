"""A replayed day of real Poloniex data: the ledger matches an independent computation, row for row.

The raw records go through the real Glue job on the stand-in (one range run, mixed formats), then
each window is analysed by the same function the DAG's compute task calls. The expected values are
computed here in plain Python from the CSV, without the project's functions.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from include.price_pipeline import analysis, layout, settings, windows
from local.feed import write_record

pytestmark = pytest.mark.integration

DAY = datetime(2017, 7, 20, tzinfo=UTC)  # holds the +6.4 % rally bar at 23:15
THRESHOLD = 1.0


def run_glue_range(aws, start: datetime, end: datetime, pair: str) -> None:
    """One Glue Python shell run of the real job script over [start, end) on the stand-in."""
    script_key = f"{layout.GLUE_SCRIPTS_PREFIX}real-data-test.py"
    aws.s3.upload_file(str(layout.GLUE_SCRIPT_PATH), aws.config.bucket, script_key)
    name = "price-normalize-real-data-test"
    aws.glue.create_job(
        Name=name,
        Role=aws.config.glue_role_name,
        Command={
            "Name": "pythonshell",
            "PythonVersion": "3.9",
            "ScriptLocation": f"s3://{aws.config.bucket}/{script_key}",
        },
        MaxCapacity=0.0625,
        Timeout=20,
        DefaultArguments={**settings.glue_job_arguments(aws.config), "--pair": pair},
    )
    run_id = aws.glue.start_job_run(
        JobName=name,
        Arguments={
            "--window_start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "--window_end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )["JobRunId"]
    deadline = time.monotonic() + 300
    while (state := aws.glue.get_job_run(JobName=name, RunId=run_id)["JobRun"])["JobRunState"] == "RUNNING":
        assert time.monotonic() < deadline, "Glue range run did not finish"
        time.sleep(1)
    assert state["JobRunState"] == "SUCCEEDED", state.get("ErrorMessage")


def independent_expectation(rows: list[dict]) -> dict[int, tuple[float, float, float, str]]:
    """{window start epoch: (previous wavg, latest wavg, signed % change, decision)} in plain Python."""
    expected = {}
    for before, row in zip(rows, rows[1:], strict=False):
        previous, latest = float(before["weightedAverage"]), float(row["weightedAverage"])
        assert int(row["date"]) - int(before["date"]) == 300  # the file has no gaps
        change = (latest - previous) / previous * 100
        expected[int(row["date"])] = (
            previous,
            latest,
            change,
            "suppressed_backfill" if abs(change) > THRESHOLD else "below_threshold",
        )
    return expected


def test_ledger_of_a_replayed_real_day_matches_an_independent_computation(aws, poloniex_rows):
    first, end = int(DAY.timestamp()), int((DAY + timedelta(days=1)).timestamp())
    rows = [r for r in poloniex_rows if first - 300 <= int(r["date"]) < end]
    assert len(rows) == 289, "the day and the candle before it"
    for row in rows:
        record = {k: int(v) if k == "date" else float(v) for k, v in row.items()}
        write_record(aws.s3, aws.config.bucket, record)  # formats rotate by slot: json, csv, xml, txt

    run_glue_range(aws, DAY - layout.SLOT, DAY + timedelta(days=1), pair="ETH/BTC")
    policy = analysis.Policy(threshold_pct=THRESHOLD, lookback_minutes=60)
    slots = [DAY + layout.SLOT * i for i in range(288)]
    for slot in slots:
        windows.analyse_window(aws.s3, aws.config, slot, policy, False, "backfill run (notify_on_backfill is off)", "-")

    expected = independent_expectation(rows)
    breaches = 0
    for slot in slots:
        entry = json.loads(aws.get(layout.ledger_key(slot)))
        previous, latest, change, decision = expected[int(slot.timestamp())]
        assert entry["previous"]["weighted_average"] == previous
        assert entry["latest"]["weighted_average"] == latest
        assert entry["change_pct"] == pytest.approx(change, rel=1e-12, abs=1e-12)
        assert entry["decision"] == decision, entry["window_start"]
        assert entry["pair"] == "ETH/BTC"
        breaches += decision == "suppressed_backfill"
    assert breaches >= 1, "2017-07-20 holds at least the 23:15 rally bar"
