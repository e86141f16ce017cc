"""Who gets which alert, end to end on the local stack (scheduler, LocalExecutor, stand-in, API server) as
``make run`` starts it: the stand-in provisioned with make run's three example subscriptions, whose filters
overlap (BTC/USDT to a phone, every other pair by mail, moves of 2 % and more to a webhook). A window where
the three pairs fire sends each subscription exactly the alerts its filter policy admits, once each, the
very messages the ledger recorded; a notifying bulk run over the same window sends none again.
"""

from __future__ import annotations

import pytest

from include.price_pipeline import layout, ledger, settings
from local import soak, subscriptions
from local.api import Api
from local.stack import isolated
from tests.conftest import utc
from tests.e2e.test_mapped_publish_grid import every_local_pair_fires

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

LIVE, BULK = "price_notification", "price_history_backfill"
W = utc(2026, 4, 7, 10, 0)  # a day no other test writes
BTC = "BTC/USDT up 1.11% in 15 min: 91,000.00"
ETH = "ETH/USDT up 2.50% in 5 min: 102.50"  # +2.5 %: the webhook's too
SOL = "SOL/USDT crossed 150 upward: 150.50"  # +1.0 %
ADMITTED = {
    "sms +15555550100": [BTC],
    "email alerts@example.com": [ETH, SOL],
    "https https://hooks.example.com/price-alerts": [ETH],
}


@pytest.fixture(scope="module")
def stack(stack_dir):
    with isolated(
        stack_dir,
        extra_env={"PRICE_RULES_FILE": "include/rules/local.json"},
        standin_args=("--subscriptions", str(subscriptions.EXAMPLE)),
    ).running(unpause=(LIVE, BULK)) as stack:
        yield stack


def received(aws) -> dict[str, list[dict]]:
    """Each example subscription's SNS envelopes (its queue emptied)."""
    example = subscriptions.load(subscriptions.EXAMPLE)
    queues = subscriptions.queues(aws["sqs"], settings.load().alert_topic_arn, example)
    return {name: soak.receive_all(aws["sqs"], url) for name, url in queues.items()}


def bulk_state(stack, run_id: str) -> str | None:
    rows = stack.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", BULK, run_id)
    return rows[0][0] if rows else None


def test_each_subscription_gets_exactly_the_alerts_its_filter_admits_once_and_never_again(stack):
    aws = soak.aws_clients(stack)
    s3 = aws["s3"]
    api, run = Api(stack), every_local_pair_fires(stack, W, "subscriptions__" + layout.slot_stamp(W))

    got = received(aws)

    assert soak.run_state(stack, run) == "success"
    assert {name: sorted(e["Subject"] for e in envelopes) for name, envelopes in got.items()} == ADMITTED
    entries = ledger.parse_entries(s3.get_object(Bucket=soak.BUCKET, Key=layout.pairs_ledger_key(W))["Body"].read())
    recorded = {rule["sns_message_id"] for entry in entries.values() for rule in entry["rules"].values()}
    inbox = soak.receive_all(aws["sqs"], soak.queue_url(aws["sqs"], "price-alerts"))  # no filter: every alert
    assert sorted(e["Subject"] for e in inbox) == [BTC, ETH, SOL]
    assert {e["MessageId"] for e in inbox} == recorded
    for envelopes in got.values():  # one copy of each admitted alert: the message the ledger recorded
        assert sorted({e["MessageId"] for e in envelopes}) == sorted(e["MessageId"] for e in envelopes)
        assert {e["MessageId"] for e in envelopes} <= recorded

    conf = {"start": W.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": (W + layout.SLOT).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "notify_on_backfill": True}  # fmt: skip
    bulk = api.call("POST", f"/api/v2/dags/{BULK}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    soak.wait_for(lambda: bulk_state(stack, bulk) in ("success", "failed"), stack=stack, what="the bulk run")

    assert bulk_state(stack, bulk) == "success"
    assert received(aws) == {name: [] for name in ADMITTED}  # at most once per (pair, rule, window)
