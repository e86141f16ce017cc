"""Native `airflow backfill create` (the CLI) with the scheduler running, on the local stack of
`make run` (PostgreSQL metadata database).

A backfill never notifies by default (breaches are recorded as suppressed), a backfill with
notify_on_backfill notifies each breach once, and backfilling an already-notified range again sends
nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.price_pipeline import layout, settings
from local.api import wait_for_backfill
from local.feed import write_record
from local.soak import default_entry, receive_all
from local.stack import Stack, isolated
from local.standin import queue_name
from tests.records import candle, seed_normalized

pytestmark = [pytest.mark.integration]

DAG_ID = "price_notification"
FIRST = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
PRICES = (102.0, 102.1, 99.0, 99.5)  # after 100.0 at 09:55: breach, calm, breach, calm


@pytest.fixture(scope="module")
def stack(stack_dir):
    env = {"PRICE_SENSOR_TIMEOUT_SECONDS": "30", "PRICE_SENSOR_POKE_SECONDS": "2"}
    with isolated(stack_dir, extra_env=env).running(unpause=(DAG_ID,)) as stack:
        yield stack


def backfill(stack: Stack, notify: bool) -> None:
    """Create a backfill over the four windows with the CLI and wait until it has completed."""
    stamp = "%Y-%m-%dT%H:%M:%S+00:00"
    stack.airflow(
        "backfill", "create", "--dag-id", DAG_ID,
        "--from-date", FIRST.strftime(stamp), "--to-date", (FIRST + 3 * layout.SLOT).strftime(stamp),
        "--reprocess-behavior", "completed", "--dag-run-conf", json.dumps({"notify_on_backfill": notify}),
    )  # fmt: skip
    [(backfill_id,)] = stack.query("SELECT max(id) FROM backfill")
    final = wait_for_backfill(stack, {"id": backfill_id}, timeout=600, report=lambda line: None)
    assert (final.done, final.total) == (4, 4), final


def test_backfill_is_quiet_by_default_notifies_once_when_asked_and_never_again(stack):
    config = settings.load({})
    s3, sqs = stack.client("s3"), stack.client("sqs")
    alerts_url = sqs.get_queue_url(QueueName=queue_name(config.alert_topic_arn))["QueueUrl"]
    seed_normalized(s3, config.bucket, candle(FIRST - layout.SLOT, 100.0))
    for index, price in enumerate(PRICES):
        write_record(s3, config.bucket, candle(FIRST + layout.SLOT * index, price), pair="ETH/USDT")

    def ledger(index: int) -> dict:
        key = layout.pairs_ledger_key(FIRST + layout.SLOT * index)
        return default_entry(s3.get_object(Bucket=config.bucket, Key=key)["Body"].read())

    backfill(stack, notify=False)
    assert receive_all(sqs, alerts_url) == []
    assert [ledger(i)["decision"] for i in range(4)] == [
        "suppressed_backfill",
        "below_threshold",
        "suppressed_backfill",
        "below_threshold",
    ]

    backfill(stack, notify=True)
    alerts = receive_all(sqs, alerts_url)
    assert sorted(a["Subject"] for a in alerts) == [
        "ETH/USDT down 3.04% in 5 min: 99.0000",
        "ETH/USDT up 2.00% in 5 min: 102.00",
    ]
    notified_ids = {ledger(i)["sns_message_id"] for i in (0, 2)}
    assert notified_ids == {a["MessageId"] for a in alerts}

    backfill(stack, notify=True)
    assert receive_all(sqs, alerts_url) == []
    assert {ledger(i)["sns_message_id"] for i in (0, 2)} == notified_ids
