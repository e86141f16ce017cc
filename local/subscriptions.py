"""Who gets which alert, on the stand-in: the alert topic's subscriptions as Terraform's ``alert_subscriptions``
declares them on AWS (README "Who gets which alert"), each a queue on the stand-in with the same filter policy.

A subscriptions file is a JSON list; each subscription has a ``protocol`` (:data:`PROTOCOLS`), an ``endpoint``
and an optional ``filter_policy``: an SNS filter policy (scope MessageAttributes) on the names of
``alerts.ATTRIBUTES``, e.g. ``{"pair": ["BTC/USDT"]}``. Terraform takes the same policy as JSON text.
"""

from __future__ import annotations

import json
from pathlib import Path

from include.price_pipeline.alerts import ATTRIBUTES

PROTOCOLS = ("email", "sms", "https", "sqs", "lambda")
#: make run's three subscribers (the README's and terraform.tfvars.example's).
EXAMPLE = Path(__file__).resolve().parent / "alert_subscriptions.json"


def load(path: Path | str) -> list[dict]:
    """The subscriptions of a file, checked as Terraform's variable checks them: ValueError says what is wrong."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        subscriptions = json.loads(handle.read(1_000_000))  # a hand-written file: bounded all the same
    if not isinstance(subscriptions, list):
        raise ValueError(f"{path}: a list of subscriptions, got {type(subscriptions).__name__}")
    for number, subscription in enumerate(subscriptions, 1):
        where = f"{path} subscription {number}"
        if not isinstance(subscription, dict) or set(subscription) - {"protocol", "endpoint", "filter_policy"}:
            raise ValueError(f"{where}: an object of protocol, endpoint and filter_policy")
        if subscription.get("protocol") not in PROTOCOLS:
            raise ValueError(f"{where}: protocol must be one of {', '.join(PROTOCOLS)}")
        if not isinstance(subscription.get("endpoint"), str) or not subscription["endpoint"].strip():
            raise ValueError(f"{where}: endpoint must be a non-empty string")
        policy = subscription.get("filter_policy", {})
        if not isinstance(policy, dict) or not all(isinstance(v, list) and v for v in policy.values()):
            raise ValueError(f"{where}: filter_policy must map attribute names to non-empty lists")
        if unknown := sorted(set(policy) - set(ATTRIBUTES)):
            raise ValueError(f"{where}: filter_policy names {unknown[0]!r}; alert attributes: {', '.join(ATTRIBUTES)}")
        if label(subscription) in map(label, subscriptions[: number - 1]):
            raise ValueError(f"{where}: {label(subscription)} again (SNS keeps one subscription per protocol and "
                             "endpoint: merge their filters)")  # fmt: skip
    return subscriptions


def label(subscription: dict) -> str:
    """How make run names a subscription: ``sms +15555550100``."""
    return f"{subscription['protocol']} {subscription['endpoint']}"


def queue_name(topic_arn: str, number: int) -> str:
    """The stand-in's queue of the topic's ``number``-th subscription (from 1) in its file."""
    return f"{topic_arn.rsplit(':', 1)[-1]}-subscriber-{number}"


def queues(sqs, topic_arn: str, subscriptions: list[dict]) -> dict[str, str]:
    """Each subscription's :func:`label` with the URL of its queue (:func:`provision` made them)."""
    return {
        label(subscription): sqs.get_queue_url(QueueName=queue_name(topic_arn, number))["QueueUrl"]
        for number, subscription in enumerate(subscriptions, 1)
    }


def provision(sns, sqs, topic_arn: str, subscriptions: list[dict]) -> None:
    """Subscribe a queue per subscription to ``topic_arn`` with the subscription's filter policy (idempotent:
    SNS keeps one subscription per queue)."""
    for number, subscription in enumerate(subscriptions, 1):
        queue_url = sqs.create_queue(QueueName=queue_name(topic_arn, number))["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        policy = subscription.get("filter_policy")
        attributes = {"FilterPolicy": json.dumps(policy), "FilterPolicyScope": "MessageAttributes"} if policy else {}
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes)


def received(sqs, queues: dict[str, str]) -> dict[str, list[str]]:
    """Which subscriptions received each message now in their queues (emptied): labels by SNS message id."""
    from local.soak import receive_all

    by_message: dict[str, list[str]] = {}
    for name, queue_url in queues.items():
        for envelope in receive_all(sqs, queue_url, wait_seconds=0):
            by_message.setdefault(envelope["MessageId"], []).append(name)
    return by_message
