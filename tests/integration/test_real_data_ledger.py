"""A replayed day of real Poloniex data: the ledger matches an independent computation, row for row.

The raw records go through the real Glue job on the stand-in (one range run, mixed formats), then
each window is analysed by the same function the DAG's analyse_pairs task calls. The expected values are
computed here in plain Python from the CSV, without the project's functions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.price_pipeline import layout, ledger, rules, settings
from local.feed import write_record

pytestmark = pytest.mark.integration

DAY = datetime(2017, 7, 20, tzinfo=UTC)  # holds the +6.4 % rally bar at 23:15
THRESHOLD = 1.0


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
        write_record(aws.s3, aws.config.bucket, record, pair="ETH/USDT")  # formats rotate by slot: json, csv, xml, txt

    window = {"--window_start": layout.iso(DAY - layout.SLOT), "--window_end": layout.iso(DAY + timedelta(days=1))}
    job_arguments = settings.glue_job_arguments(aws.config)
    run = aws.run_real_glue_job(window, DefaultArguments=job_arguments)
    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    rule_set = rules.with_overrides(rules.load(rules.DEFAULT_RULES_FILE), {"threshold_pct": THRESHOLD})
    slots = [DAY + layout.SLOT * i for i in range(288)]
    for slot in slots:
        why_not_due = "backfill run (notify_on_backfill is off)"
        ledger.analyse_pairs(aws.s3, aws.config, rule_set, slot, False, why_not_due, "-", "")

    expected = independent_expectation(rows)
    breaches = 0
    for slot in slots:
        entry = ledger.parse_entries(aws.get(layout.pairs_ledger_key(slot)))["ETH/USDT"]
        [state] = entry["rules"].values()
        previous, latest, change, decision = expected[int(slot.timestamp())]
        assert state["reference"]["weighted_average"] == previous
        assert entry["latest"]["weighted_average"] == latest
        assert state["change_pct"] == pytest.approx(change, rel=1e-12, abs=1e-12)
        assert state["decision"] == decision, entry["window_start"]
        breaches += decision == "suppressed_backfill"
    assert breaches >= 1, "2017-07-20 holds at least the 23:15 rally bar"
