"""Who gets which alert, on the stand-in: make run's three example subscriptions (and one filtering on the old
``symbol`` name) as the stand-in provisions them, each a queue with its SNS filter policy, get exactly the
alerts their policies admit, published as the publish task publishes (the provider's SnsHook), and make run
prints each alert with the subscriptions that received it.

Topics of their own (the session's alert topic keeps its one subscription, test_standin checks it).
"""

from __future__ import annotations

import uuid

import pytest

from include.price_pipeline import alerts, settings
from local import run, soak, subscriptions
from local.standin import provision, queue_name
from tests.conftest import STANDIN_CREDENTIALS

pytestmark = pytest.mark.integration

SMS, EMAIL, HTTPS = "sms +15555550100", "email alerts@example.com", "https https://hooks.example.com/price-alerts"
LEGACY = "sqs arn:aws:sqs:us-east-1:123456789012:legacy-sol"
#: Alerts of one window, as alerts.alert builds them: (pair, rule, kind, change %).
FIRED = [
    ("BTC/USDT", "move-15m", "change", 1.1111),
    ("BTC/USDT", "drop-15m", "change", -2.4),
    ("ETH/USDT", "move-5m", "change", 2.5),
    ("SOL/USDT", "cross-150", "crossing", 1.0067),
]


@pytest.fixture(scope="module")
def topics(standin):
    """A config whose alert and ops topics are this module's, provisioned (twice: it is idempotent) with the
    example subscriptions and a subscriber that still filters on ``symbol``; the config and the subscriptions."""
    account = f"arn:aws:sns:{settings.LOCAL_REGION}:{settings.LOCAL_ACCOUNT}"
    suffix = uuid.uuid4().hex[:8]
    config = settings.load(
        {"PRICE_ALERT_TOPIC_ARN": f"{account}:alerts-{suffix}", "PRICE_OPS_TOPIC_ARN": f"{account}:ops-{suffix}"}
    )
    legacy = {"protocol": "sqs", "endpoint": LEGACY.split()[1], "filter_policy": {"symbol": ["SOL/USDT"]}}
    subscribed = [*subscriptions.load(subscriptions.EXAMPLE), legacy]
    provision(standin, STANDIN_CREDENTIALS, config, alert_subscriptions=subscribed)
    provision(standin, STANDIN_CREDENTIALS, config, alert_subscriptions=subscribed)
    return config, subscribed


@pytest.fixture
def queues(aws, topics) -> dict[str, str]:
    """The subscriptions' queues by label, they and the module's alert inbox emptied."""
    config, subscribed = topics
    queues = subscriptions.queues(aws.sqs, config.alert_topic_arn, subscribed)
    for queue_url in [*queues.values(), inbox(aws, config)]:
        soak.receive_all(aws.sqs, queue_url, wait_seconds=0)
    return queues


def inbox(aws, config) -> str:
    return aws.sqs.get_queue_url(QueueName=queue_name(config.alert_topic_arn))["QueueUrl"]


def publish_window(config) -> dict[str, str]:
    """The FIRED alerts published to the config's alert topic; their subjects by SNS message id."""
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    sns, sent = SnsHook(aws_conn_id="aws_default"), {}
    for pair, rule, kind, change in FIRED:
        view = {
            "kind": kind, "direction": "up" if change > 0 else "down", "change_pct": change, "level": 150,
            "reason": "test", "window_start": "2026-03-31T10:00:00Z", "window_end": "2026-03-31T10:05:00Z",
            "reference": {"timestamp": "2026-03-31T09:45:00Z", "weighted_average": 100.0},
            "latest": {"timestamp": "2026-03-31T10:00:00Z", "weighted_average": 100.0 + change},
        }  # fmt: skip
        alert = alerts.alert(pair, rule, view, "http://127.0.0.1:8080/dags/price_notification/runs/test")
        kwargs = {"subject": alert["subject"], "message_attributes": alert["message_attributes"]}
        sent[sns.publish_to_target(config.alert_topic_arn, alert["message"], **kwargs)["MessageId"]] = alert["subject"]
    return sent


def test_each_subscription_gets_exactly_the_alerts_its_filter_policy_admits_once(aws, topics, queues):
    config, _ = topics

    sent = publish_window(config)
    got = {name: soak.receive_all(aws.sqs, url, wait_seconds=0) for name, url in queues.items()}

    received = {name: sorted((e["MessageAttributes"]["pair"]["Value"], e["MessageAttributes"]["change_pct"]["Value"])
                             for e in envelopes) for name, envelopes in got.items()}  # fmt: skip
    assert received == {
        SMS: [("BTC/USDT", "-2.4"), ("BTC/USDT", "1.1111")],  # BTC, every move
        EMAIL: [("ETH/USDT", "2.5"), ("SOL/USDT", "1.0067")],  # every other pair
        HTTPS: [("BTC/USDT", "-2.4"), ("ETH/USDT", "2.5")],  # |change| of 2 % and more, either way
        LEGACY: [("SOL/USDT", "1.0067")],  # a filter on the old name still works
    }
    for envelopes in got.values():  # once each, the very messages published
        assert len({e["MessageId"] for e in envelopes}) == len(envelopes)
        assert {e["MessageId"] for e in envelopes} <= set(sent)
    assert sorted(e["MessageId"] for e in soak.receive_all(aws.sqs, inbox(aws, config), wait_seconds=0)) == sorted(sent)
    listed = aws.client("sns").list_subscriptions_by_topic(TopicArn=config.alert_topic_arn)["Subscriptions"]
    assert len(listed) == 1 + len(queues)  # the inbox and one per subscription, provisioned twice


def test_make_run_prints_each_alert_with_the_subscriptions_that_received_it(aws, topics, queues):
    config, _ = topics
    sent = publish_window(config)
    printed = []

    run.print_notifications(aws.sqs, config, queues, out=lambda text, **_: printed.append(text))

    by_subject = {block.split(": ", 1)[1].split("\n")[0]: block.split("\n")[2].strip() for block in printed}
    assert by_subject == {
        "BTC/USDT up 1.11% in 15 min: 101.11": f"Received by: {SMS}",
        "BTC/USDT down 2.40% in 15 min: 97.6000": f"Received by: {SMS}, {HTTPS}",
        "ETH/USDT up 2.50% in 15 min: 102.50": f"Received by: {EMAIL}, {HTTPS}",
        "SOL/USDT crossed 150 upward: 101.01": f"Received by: {EMAIL}, {LEGACY}",
    }, printed
    assert len(printed) == len(sent)
    assert subscriptions.received(aws.sqs, queues) == {}  # the copies were taken too
