"""``make migrate-ledger`` on the stand-in: the default pair's entries of before one lane (an object per
window) become its lines of the windows' ledger objects, once, and a notified window is never sent again."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from include.price_pipeline import layout, ledger, rules
from local.standin import aws_env
from tests.conftest import ROOT, STANDIN_CREDENTIALS, utc
from tests.records import candle, seed_normalized

pytestmark = pytest.mark.integration

SLOT = utc(2025, 10, 6, 12, 0)  # a day no other test writes
RULE = rules.load(rules.DEFAULT_RULES_FILE).default_rule.name


def old_entry(slot, decision: str, **fields) -> bytes:
    """An entry as the default pair's lane wrote it before (``alerts.ledger_entry``'s fields)."""
    price = {"timestamp": layout.iso(slot), "weighted_average": 103.0, "source_key": "raw"}
    previous = {**price, "timestamp": layout.iso(slot - layout.SLOT), "weighted_average": 100.0}
    entry = {"window_start": layout.iso(slot), "window_end": layout.iso(slot + layout.SLOT), "pair": "ETH/USDT",
             "latest": price, "previous": previous,
             "change_pct": 3.0, "abs_change_pct": 3.0, "direction": "up", "threshold_pct": 1.0, "lookback_minutes": 60,
             "min_abs_move": 0.0, "repeat_windows": 0, "decision": decision, "reason": "|change| 3.00% > 1.0%",
             "sns_message_id": None} | fields  # fmt: skip
    return json.dumps(entry, sort_keys=True).encode() + b"\n"


def migrate(aws) -> str:
    env = {**os.environ, **aws_env(aws.url, STANDIN_CREDENTIALS)}
    done = subprocess.run(["make", "-s", "migrate-ledger"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_make_migrate_ledger_moves_every_old_entry_once_and_a_notified_window_is_not_sent_again(aws):
    notified, claimed, calm = SLOT, SLOT + layout.SLOT, SLOT + 2 * layout.SLOT
    aws.put(layout.ledger_key(notified), old_entry(notified, "notified", sns_message_id="m-before"))
    aws.put(layout.ledger_key(claimed), old_entry(claimed, "publishing", claimed_by="price_notification/x",
                                                  publish_started=True))  # fmt: skip
    aws.put(layout.ledger_key(calm), old_entry(calm, "below_threshold"))
    aws.put(layout.pairs_ledger_key(calm), ledger.entries_bytes({"SOL/USDT": {
        "pair": "SOL/USDT", "decision": "analysed", "rules": {"cross": {"decision": "not_crossed"}}}}))  # fmt: skip

    first = migrate(aws)

    assert "3 entries moved, 0 kept" in first
    assert [key for key in aws.keys(layout.CHANGES_PREFIX + layout.partition(SLOT)) if key.endswith("Z.json")] == []
    lines = {slot: ledger.parse_entries(aws.get(layout.pairs_ledger_key(slot))) for slot in (notified, claimed, calm)}
    assert lines[notified]["ETH/USDT"]["decision"] == "notified"
    assert lines[notified]["ETH/USDT"]["rules"][RULE]["sns_message_id"] == "m-before"
    assert (lines[claimed]["ETH/USDT"]["decision"], lines[claimed]["ETH/USDT"]["claimed_by"]) == (
        "publishing", "price_notification/x"
    )  # fmt: skip
    assert lines[claimed]["ETH/USDT"]["rules"][RULE]["publish_started"] is True
    assert set(lines[calm]) == {"ETH/USDT", "SOL/USDT"}
    assert "0 entries moved, 0 kept" in migrate(aws)  # a second run finds nothing to move

    seed_normalized(aws.s3, aws.config.bucket, candle(notified - layout.SLOT, 100.0))
    seed_normalized(aws.s3, aws.config.bucket, candle(notified, 103.0))
    again = ledger.analyse_pairs(aws.s3, aws.config, rules.load(rules.DEFAULT_RULES_FILE), notified, True, "", "u", "r")
    assert again["alerts"] == []  # the window's alert went out before the upgrade: never again
