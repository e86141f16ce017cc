"""Soak under faults, CI size: 24 windows of real Poloniex data through the real price_notification
DAG (native backfill, scheduler running) while 20 % of the S3, Glue, SNS and CloudWatch Logs calls
fail. ``make soak`` runs the same check over a whole day (288 windows); this one runs in ``make test``.

The expected series is computed in local/soak.py in plain Python, not with the pipeline's functions.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

import pytest

from local import soak

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

FIRST = datetime(2017, 7, 16, 10, 30, tzinfo=UTC)  # 24 windows holding 8 breaches of 1 %
WINDOWS = 24


@pytest.fixture(scope="module")
def report(stack_dir):
    report = soak.run_soak(
        windows=WINDOWS, first=FIRST, fault_spec=soak.DEFAULT_FAULTS, seed=7, timeout=1800, state_dir=stack_dir
    )
    out = stack_dir / "report.json"
    out.write_text(json.dumps(asdict(report), indent=1, sort_keys=True))
    print("\n".join(report.lines()))
    return report


def test_faults_were_really_injected_into_every_service(report):
    injected = {key.split(":", 1)[0] for key in report.faults["faults"]}

    assert injected == {"s3", "glue", "sns", "logs"}
    assert sum(report.faults["faults"].values()) > 0.1 * sum(report.faults["calls"].values())


def test_every_window_is_analysed_once_and_every_run_succeeds(report):
    assert report.missing == []
    assert report.analysed == WINDOWS
    assert report.runs == {"success": WINDOWS}


def test_no_window_is_notified_twice_and_nothing_unexpected_is_notified(report):
    assert report.duplicates == 0
    assert report.unexpected_alerts == []


def test_a_backfill_under_faults_opens_no_ops_incident(report):
    """Issue 38: backfill runs neither open nor resolve incidents, whatever failed and was retried."""
    assert report.incident_messages == report.incident_messages_expected == {}


def test_no_object_is_lost_altered_or_quarantined(report):
    assert report.lost_objects == []
    assert report.missing_analysis == []
    assert report.altered_analysis == []
    assert report.quarantined == []


def test_each_window_is_compared_with_its_previous_record_and_the_breaches_match_the_independent_series(report):
    assert report.wrong_ledger == []
    assert report.not_notified == []
    assert report.notified == report.breaches_expected == 8
