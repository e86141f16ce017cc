"""Two analysis-and-publish flows of one window racing through the stand-in (threads, real HTTP, moto
enforcing If-None-Match / If-Match like S3): both read the ledger before either writes, and exactly one
publishes. Deterministic: a barrier holds each flow right after its ledger read until both have read.
"""

from __future__ import annotations

import threading

import pytest

from include.price_pipeline import layout, ledger, rules
from tests.conftest import utc
from tests.records import candle, seed_normalized

pytestmark = pytest.mark.integration


class ReadTogether:
    """An S3 client whose first read of one key waits until every flow has read it once."""

    def __init__(self, s3, key: str, barrier: threading.Barrier):
        self._s3, self._key, self._barrier, self._waited = s3, key, barrier, False

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def get_object(self, **kwargs):
        try:
            return self._s3.get_object(**kwargs)
        finally:
            if kwargs["Key"] == self._key and not self._waited:
                self._waited = True
                self._barrier.wait(timeout=30)


RULES = rules.load(rules.DEFAULT_RULES_FILE)
PAIR, RULE = RULES.default_pair, RULES.default_rule.name


def flow(aws, s3, slot, claimant: str) -> str | None:
    """What one run does: analyse (and claim), then, with the claim, publish and record notified."""
    result = ledger.analyse_pairs(s3, aws.config, RULES, slot, True, "", "http://ui/run", claimant)
    if not result["alerts"]:
        return None

    def publish(alert):
        return aws.sns.publish(TopicArn=aws.config.alert_topic_arn, Subject=alert["subject"], Message=alert["message"])[
            "MessageId"
        ]

    published = ledger.publish_alerts(s3, aws.config, slot, result["alerts"], claimant, publish)
    return published["sent"].get(f"{PAIR} {RULE}")


@pytest.fixture
def sns(aws):
    aws.sns = aws.client("sns")
    return aws


@pytest.mark.parametrize("stored", [None, "below_threshold"], ids=["no entry yet", "entry to replace"])
def test_two_runs_racing_on_one_window_publish_exactly_once(sns, stored):
    aws = sns
    slot = utc(2026, 3, 2, 10, 0) if stored is None else utc(2026, 3, 3, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    seed_normalized(aws.s3, aws.config.bucket, candle(slot, 103.0))
    key = layout.pairs_ledger_key(slot)
    if stored:
        aws.put(
            key,
            ledger.entries_bytes({PAIR: {"pair": PAIR, "decision": "analysed", "rules": {RULE: {"decision": stored}}}}),
        )
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(claimant):
        try:
            outcomes[claimant] = flow(aws, ReadTogether(aws.s3, key, barrier), slot, claimant)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            outcomes[claimant] = error

    threads = [threading.Thread(target=run, args=(f"price_notification/run_{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    sent = aws.alerts()
    assert len(sent) == 1, outcomes
    assert sorted(outcomes.values(), key=lambda v: v is None) == [sent[0]["MessageId"], None]
    entry = ledger.parse_entries(aws.get(key))[PAIR]
    assert (entry["decision"], entry["rules"][RULE]["sns_message_id"]) == ("notified", sent[0]["MessageId"])
