"""Backfills that answer in minutes and live alerts that wait for no one, on the local stack (scheduler,
triggerer, PostgreSQL; the three pairs of ``make run``'s rules file), through ``make backfill``.

The stack's sensor timeout is an hour: a run that waited like a live window for a missing record, or an
analysis that waited for a window that will never be normalized, would outlast every test here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from include.price_pipeline import layout, settings
from local.api import Api
from local.feed import write_record
from local.soak import receive_all
from local.stack import isolated
from local.standin import queue_name
from tests.conftest import make_backfill
from tests.records import candle, seed_normalized, seed_pairs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

DAG_ID = "price_notification"
RULES_FILE = "include/rules/local.json"
PAIRS = {"ETH/USDT": 100.0, "BTC/USDT": 90000.0, "SOL/USDT": 149.0}
BREACH = {"ETH/USDT": 102.0, "BTC/USDT": 92000.0, "SOL/USDT": 151.0}  # +2 %, +2.2 % in 15 min, crosses 150
STAMP = "%Y-%m-%dT%H:%M"


@pytest.fixture(scope="module")
def stack(stack_dir):
    env = {
        "PRICE_RULES_FILE": RULES_FILE,
        "PRICE_SENSOR_TIMEOUT_SECONDS": "3600",
        "PRICE_MAX_ALERT_AGE_MINUTES": "120",
    }
    started = datetime.now(UTC)
    with isolated(stack_dir, extra_env=env).running(unpause=(DAG_ID,)) as stack:
        stack.started = started
        yield stack


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack)


class Queues:
    def __init__(self, stack):
        config = settings.load({})
        self.sqs = stack.client("sqs")
        self.s3 = stack.client("s3")
        self.bucket = config.bucket
        self.alerts = self.sqs.get_queue_url(QueueName=queue_name(config.alert_topic_arn))["QueueUrl"]
        self.ops = self.sqs.get_queue_url(QueueName=queue_name(config.ops_topic_arn))["QueueUrl"]


@pytest.fixture(scope="module")
def aws(stack):
    return Queues(stack)


def write_records(aws, slot, prices):
    for pair, price in prices.items():
        write_record(aws.s3, aws.bucket, candle(slot, price), pair=pair)


def seed_history(aws, slots):
    for slot in slots:
        seed_normalized(aws.s3, aws.bucket, candle(slot, PAIRS["ETH/USDT"]))
        seed_pairs(aws.s3, aws.bucket, slot, {p: v for p, v in PAIRS.items() if p != "ETH/USDT"})


def trigger_window(api, slot, run_id):
    body = {
        "dag_run_id": run_id,
        "logical_date": slot.isoformat(),
        "data_interval_start": slot.isoformat(),
        "data_interval_end": (slot + layout.SLOT).isoformat(),
        "conf": {},
    }
    api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", body)


def task_state(stack, run_id, task_id):
    rows = stack.query(
        "SELECT state FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s", DAG_ID, run_id, task_id
    )
    return rows[0][0] if rows else None


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(1)
    return value


def test_a_live_window_sends_every_pairs_alert_while_the_previous_windows_run_still_waits_for_its_record(
    stack, api, aws
):
    """The previous window has no record and its run's sensor waits (deferred, an hour here): the next
    window's alerts, of the default pair and of every other pair, go out without waiting for it.

    Both windows are before the first one the scheduler runs after the unpause, so only these runs exist.
    """
    window = layout.slot_start(stack.started) - 3 * layout.SLOT
    previous = window - layout.SLOT
    seed_history(aws, [previous - layout.SLOT * back for back in range(1, 12)])
    write_records(aws, window, BREACH)
    receive_all(aws.sqs, aws.alerts)

    trigger_window(api, previous, "live_previous")
    wait_until(lambda: task_state(stack, "live_previous", "wait_for_price_record") == "deferred", 300, "deferred")
    trigger_window(api, window, "live_window")

    alerts = []
    wait_until(lambda: alerts.extend(receive_all(aws.sqs, aws.alerts)) or len(alerts) >= 3, 600, "three alerts")

    assert sorted(alert["MessageAttributes"]["symbol"]["Value"] for alert in alerts) == sorted(PAIRS)
    assert task_state(stack, "live_previous", "wait_for_price_record") == "deferred"  # still waiting
    assert task_state(stack, "live_window", "analyse_pairs") == "success"


def test_a_backfill_of_windows_without_records_ends_at_once_naming_each_window_and_pages_nobody(
    stack, aws, monkeypatch
):
    """Ten windows of a day nobody wrote, but for one unreadable record: nine end as *no record* at once,
    the quarantined one fails; each is listed with the reason its task logged, and ops hear nothing."""
    first = datetime(2026, 2, 10, 10, 0, tzinfo=UTC)
    last = first + 9 * layout.SLOT
    aws.s3.put_object(
        Bucket=aws.bucket, Key=layout.ingestion_key(first, ".json", pair="ETH/USDT"), Body=b"not a price record"
    )
    receive_all(aws.sqs, aws.ops)

    started = time.monotonic()
    code, out = make_backfill(stack, monkeypatch, "--from", first.strftime(STAMP), "--to", last.strftime(STAMP))
    print(f"backfill of 10 windows without usable records: {time.monotonic() - started:.1f} s")

    assert code == 1, out
    assert "10 of 10 windows did not succeed (1 failed, 9 no record)" in out
    [failed] = [line.strip() for line in out.splitlines() if " UTC  failed: " in line]
    assert failed.startswith(f"{first:%Y-%m-%d %H:%M} UTC  failed: AirflowFailException: window "
                             f"{layout.slot_stamp(first)}: no pair has a record to decide (")  # fmt: skip
    assert "ETH/USDT: quarantined: " in failed  # every pair late, the default one with its reason
    named = [line.strip() for line in out.splitlines() if " UTC  no record: " in line]
    assert len(named) == 9, out
    for index, line in enumerate(named, start=1):
        slot = first + index * layout.SLOT
        assert line.startswith(f"{slot:%Y-%m-%d %H:%M} UTC  no record: no record for window {layout.slot_stamp(slot)}")
        assert layout.ingestion_window_prefix(slot) in line
    assert "9 no record, waiting 0 for a record and 0 for an earlier window, 10 windows, complete" in out
    assert receive_all(aws.sqs, aws.ops) == []  # no Feed stale, no Record quarantined: the summary is the report


def test_a_backfill_right_after_a_cancelled_one_finishes_without_waiting_for_the_cancelled_runs(
    stack, api, aws, monkeypatch
):
    """The cancelled backfill's windows have records that were never normalized: its runs failed, their
    task instances never got a state and never will. The next backfill's windows look back at them and
    must not wait for them."""
    cancelled = datetime(2026, 2, 11, 10, 0, tzinfo=UTC)
    first = cancelled + 6 * layout.SLOT
    for index in range(10):
        write_records(aws, cancelled + index * layout.SLOT, PAIRS)
    backfill = api.create_backfill(cancelled, first - layout.SLOT, notify=False, max_active_runs=1)
    api.call("PUT", f"/api/v2/backfills/{backfill['id']}/cancel")

    started = time.monotonic()
    code, out = make_backfill(
        stack, monkeypatch, "--from", first.strftime(STAMP), "--to", (first + 3 * layout.SLOT).strftime(STAMP)
    )
    print(f"backfill of 4 windows after a cancelled one: {time.monotonic() - started:.1f} s")

    assert code == 0, out
    assert "4 of 4 windows succeeded" in out
    unnormalized = stack.query(
        "SELECT count(*) FROM backfill_dag_run b JOIN dag_run r ON r.id = b.dag_run_id "
        "WHERE b.backfill_id = %s AND r.state = 'failed'",
        backfill["id"],
    )
    assert unnormalized[0][0] > 0, "the cancelled backfill left failed runs behind"
