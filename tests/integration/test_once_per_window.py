"""Once per window under real concurrent runs on the local stack (scheduler, LocalExecutor, stand-in):
two runs of one window, or a live run and a bulk run over the same windows, send exactly one SNS message
per breach; the run that lost the claim says so in its log. Also a REST trigger without a logical date.

One stack with cron scheduling on (the scheduled run of the latest window is one of the racers).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.price_pipeline import layout
from local import soak
from local.api import Api, backfill_when_free
from local.feed import write_record
from local.stack import Stack, isolated
from tests.records import candle, seed_normalized

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

LIVE, BULK = "price_notification", "price_history_backfill"
SLOT = layout.SLOT


@pytest.fixture(scope="module")
def stack(stack_dir):
    stack = isolated(stack_dir, extra_env={"PRICE_SENSOR_TIMEOUT_SECONDS": "60", "PRICE_SENSOR_POKE_SECONDS": "2"})
    # No scheduler yet: the first test starts it once its window's records are in, so the scheduled run of
    # that window (catchup off: the latest one) is one of the racers.
    with stack.running(tuple(c for c in stack.components if c != "scheduler"), unpause=(LIVE, BULK)):
        yield stack


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack)


@pytest.fixture(scope="module")
def aws(stack):
    return soak.aws_clients(stack)


def alerts(aws) -> list[dict]:
    return soak.receive_all(aws["sqs"], soak.queue_url(aws["sqs"], "price-alerts"))


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_runs_finished(stack: Stack, dag_id: str, run_ids: list[str]) -> dict[str, str]:
    def states():
        rows = dict(stack.query("SELECT run_id, state FROM dag_run WHERE dag_id = %s", dag_id))
        got = {run_id: rows.get(run_id) for run_id in run_ids}
        return got if all(state in ("success", "failed") for state in got.values()) else None

    return soak.wait_for(states, timeout=900, what=f"{dag_id} runs {run_ids} finished", stack=stack)


def task_log(stack: Stack, dag_id: str, run_id: str, task_id: str) -> str:
    folder = stack.logs / "tasks" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(path.read_text() for path in sorted(Path(folder).rglob("*.log")))


def latest_window_with_time_to_spare(spare: timedelta = timedelta(seconds=100)) -> datetime:
    """The latest complete window, once the next boundary is at least ``spare`` away."""
    while True:
        now = datetime.now(UTC)
        if layout.slot_start(now) + SLOT - now >= spare:
            return layout.slot_start(now) - SLOT
        time.sleep(5)


def test_a_scheduled_run_and_a_rest_run_without_logical_date_of_one_window_send_one_alert(stack, aws, api):
    window = latest_window_with_time_to_spare()
    seed_normalized(aws["s3"], soak.BUCKET, candle(window - SLOT, 100.0))
    write_record(aws["s3"], soak.BUCKET, candle(window, 103.0), pair="ETH/USDT")
    stack.start_airflow(("scheduler",))  # it creates the scheduled run of `window` (catchup off)

    manual = api.call("POST", f"/api/v2/dags/{LIVE}/dagRuns", {"logical_date": None})["dag_run_id"]
    scheduled = soak.wait_for(
        lambda: stack.query(
            "SELECT run_id FROM dag_run WHERE dag_id = %s AND run_type = 'scheduled' AND data_interval_start = %s",
            LIVE,
            window,
        ),
        what="the scheduled run of the window",
        stack=stack,
    )[0][0]
    states = wait_runs_finished(stack, LIVE, [manual, scheduled])

    assert set(states.values()) == {"success"}, states
    [alert] = alerts(aws)
    entry = soak.ledger_entry(aws["s3"], window)
    assert (entry["decision"], entry["sns_message_id"]) == ("notified", alert["MessageId"])
    logs = {run: task_log(stack, LIVE, run, "analyse_pairs") for run in (manual, scheduled)}
    assert "Run without a logical date" in logs[manual]
    assert f"analysing the latest complete window, {iso(window)}" in logs[manual]
    losers = [run for run, text in logs.items() if "this run does not publish it" in text]
    assert len(losers) == 1, "the run that did not publish says why in its log"


def test_a_live_run_and_a_notifying_bulk_run_over_the_same_window_send_one_alert(stack, aws, api):
    window = utc(2017, 7, 24, 10, 0)
    seed_normalized(aws["s3"], soak.BUCKET, candle(window - SLOT, 100.0))
    write_record(aws["s3"], soak.BUCKET, candle(window, 96.0), pair="ETH/USDT")

    live = soak.backfill_window(stack, api, window)
    bulk = api.call(
        "POST",
        f"/api/v2/dags/{BULK}/dagRuns",
        {"logical_date": None, "conf": {"start": iso(window), "end": iso(window + SLOT), "notify_on_backfill": True}},
    )["dag_run_id"]
    live_state = soak.wait_for(lambda: soak.run_state(stack, live) in ("success", "failed"), timeout=900, stack=stack)
    bulk_state = wait_runs_finished(stack, BULK, [bulk])

    assert live_state
    assert soak.run_state(stack, live) == "success"
    assert bulk_state == {bulk: "success"}
    [alert] = alerts(aws)
    assert alert["Subject"] == "ETH/USDT down 4.00% in 5 min: 96.0000"
    assert soak.ledger_entry(aws["s3"], window)["sns_message_id"] == alert["MessageId"]


def test_a_native_backfill_overlapping_a_notifying_bulk_run_sends_each_breach_once(stack, aws, api):
    first = utc(2017, 7, 25, 10, 0)
    seed_normalized(aws["s3"], soak.BUCKET, candle(first - SLOT, 100.0))
    slots = [first + n * SLOT for n in range(3)]
    for slot, price in zip(slots, (102.0, 102.1, 99.0), strict=True):
        write_record(aws["s3"], soak.BUCKET, candle(slot, price), pair="ETH/USDT")

    backfill_id = backfill_when_free(stack, api, slots[0], slots[-1], notify=True, report=lambda line: None)["id"]
    bulk = api.call(
        "POST",
        f"/api/v2/dags/{BULK}/dagRuns",
        {"logical_date": None, "conf": {"start": iso(first), "end": iso(slots[-1] + SLOT), "notify_on_backfill": True}},
    )["dag_run_id"]
    runs = soak.wait_for_backfill(stack, backfill_id, timeout=900)
    bulk_state = wait_runs_finished(stack, BULK, [bulk])

    assert runs == {"success": 3}
    assert bulk_state == {bulk: "success"}
    sent = alerts(aws)
    assert soak.alert_windows(sent) == {iso(slots[0]): 1, iso(slots[2]): 1}
    entries = [soak.ledger_entry(aws["s3"], slot) for slot in slots]
    assert [e["decision"] for e in entries] == ["notified", "below_threshold", "notified"]
    assert {entries[0]["sns_message_id"], entries[2]["sns_message_id"]} == {a["MessageId"] for a in sent}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)
