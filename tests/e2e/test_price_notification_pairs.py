"""End to end, three pairs: `dag.test()` runs of price_notification parsed with the local rules file
(ETH/USDT change over 5 min, the default pair; BTC/USDT change over 15 min with a cooldown; SOL/USDT
crossing 150) against the stand-in. One live window sends exactly one message per firing (pair, rule),
with the filter attributes; a re-run sends nothing more; a window without BTC/USDT's record tells ops
that pair was late and still alerts the others."""

from __future__ import annotations

import json

import pytest

from include.price_pipeline import layout, ledger
from local.feed import write_record
from tests.conftest import utc
from tests.e2e.test_price_notification import parse_dag_with, run_window, task_states
from tests.records import candle, seed_normalized, seed_pairs

pytestmark = pytest.mark.e2e

W = utc(2026, 3, 9, 10, 0)  # a day no other test uses


@pytest.fixture(scope="module")
def dag(airflow_db):
    with pytest.MonkeyPatch.context() as patch:
        dag = parse_dag_with(patch, "price_notification_pairs", PRICE_RULES_FILE="include/rules/local.json")
    assert {t.task_id for t in dag.tasks} >= {"analyse_pairs", "publish_price_alerts"}
    return dag


def seed(aws, slot, prices: dict[str, float]) -> None:
    """The canonical CSVs of an earlier window, as the Glue job writes them (the default pair's own, the
    others' shared one)."""
    if "ETH/USDT" in prices:
        seed_normalized(aws.s3, aws.config.bucket, candle(slot, prices.pop("ETH/USDT")))
    if prices:
        seed_pairs(aws.s3, aws.config.bucket, slot, prices)


def land(aws, pair: str, slot, price: float) -> None:
    """A producer's raw record of ``slot`` (the default pair under its single-pair key)."""
    if pair == "ETH/USDT":
        write_record(aws.s3, aws.config.bucket, candle(slot, price), "json", pair="ETH/USDT")
    else:
        aws.put(layout.ingestion_key(slot, ".json", pair=pair), json.dumps(candle(slot, price)))


def pair_ledger(aws, slot) -> dict:
    return ledger.parse_entries(aws.get(layout.pairs_ledger_key(slot)))


def test_three_pairs_one_live_window_exactly_the_expected_messages(dag, aws):
    seed(aws, W - layout.SLOT * 3, {"BTC/USDT": 90000.0})
    seed(aws, W - layout.SLOT * 2, {"BTC/USDT": 90100.0})
    seed(aws, W - layout.SLOT, {"ETH/USDT": 100.0, "BTC/USDT": 90500.0, "SOL/USDT": 149.0})
    land(aws, "ETH/USDT", W, 102.5)  # +2.5 % over 5 min
    land(aws, "BTC/USDT", W, 91000.0)  # +1.11 % over 15 min
    land(aws, "SOL/USDT", W, 150.5)  # crosses 150 upward

    run = run_window(dag, W, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    sent = {alert["Subject"]: alert for alert in aws.alerts()}
    assert sorted(sent) == [
        "BTC/USDT up 1.11% in 15 min: 91,000.00",
        "ETH/USDT up 2.50% in 5 min: 102.50",
        "SOL/USDT crossed 150 upward: 150.50",
    ]
    attributes = {k: v["Value"] for k, v in sent["BTC/USDT up 1.11% in 15 min: 91,000.00"]["MessageAttributes"].items()}
    assert attributes == {"pair": "BTC/USDT", "symbol": "BTC/USDT", "rule": "move-15m", "kind": "change",
                          "direction": "up", "change_pct": "1.1111"}  # fmt: skip
    eth = sent["ETH/USDT up 2.50% in 5 min: 102.50"]["MessageAttributes"]
    assert {k: v["Value"] for k, v in eth.items()} == {
        "pair": "ETH/USDT", "symbol": "ETH/USDT", "rule": "move-5m", "kind": "change", "direction": "up",
        "change_pct": "2.5"
    }  # fmt: skip
    sol = sent["SOL/USDT crossed 150 upward: 150.50"]
    assert {k: v["Value"] for k, v in sol["MessageAttributes"].items()} == {
        "pair": "SOL/USDT", "symbol": "SOL/USDT", "rule": "cross-150", "kind": "crossing", "direction": "up",
        "change_pct": "1.0067"
    }  # fmt: skip
    assert "Reference: 149.00 at 2026-03-09T09:55:00Z" in sol["Message"]
    btc = pair_ledger(aws, W)["BTC/USDT"]
    assert btc["decision"] == "notified"
    assert "claimed_by" not in btc
    assert btc["rules"]["move-15m"]["sns_message_id"] == sent["BTC/USDT up 1.11% in 15 min: 91,000.00"]["MessageId"]
    assert btc["rules"]["move-15m"]["reference"]["timestamp"] == "2026-03-09T09:45:00Z"
    assert pair_ledger(aws, W)["SOL/USDT"]["rules"]["cross-150"]["decision"] == "notified"
    assert pair_ledger(aws, W)["ETH/USDT"]["decision"] == "notified"  # the default pair: a line like any other
    assert aws.ops() == []

    again = run_window(dag, W, notify_on_backfill=True)

    assert again.state == "success", task_states(again)
    assert aws.alerts() == []  # every (pair, rule, window) once
    assert pair_ledger(aws, W)["BTC/USDT"] == btc


def test_a_late_pair_is_reported_to_ops_and_does_not_hold_the_others(dag, aws):
    slot = W + layout.SLOT * 12
    seed(aws, slot - layout.SLOT, {"ETH/USDT": 100.0, "SOL/USDT": 151.0})
    land(aws, "ETH/USDT", slot, 98.0)  # -2 %
    land(aws, "SOL/USDT", slot, 149.9)  # crosses 150 downward; BTC/USDT's record never lands

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    assert sorted(alert["Subject"] for alert in aws.alerts()) == [
        "ETH/USDT down 2.00% in 5 min: 98.0000",
        "SOL/USDT crossed 150 downward: 149.90",
    ]
    [ops] = aws.ops()  # an incident opened: BTC/USDT's next record on time resolves it
    assert ops["Subject"] == f"[price pipeline] Pair late: BTC/USDT {slot:%Y-%m-%d %H:%M} UTC"
    assert ops["Message"].startswith("- BTC/USDT: no record of the window when it was analysed\n")
    assert list(pair_ledger(aws, slot)) == ["ETH/USDT", "SOL/USDT"]  # no BTC/USDT entry: a later run can decide it


def test_a_quarantined_default_record_is_late_with_its_reason_and_holds_back_no_other_pair(dag, aws):
    """One lane: the default pair's quarantined record makes it late as any pair's does (ops get its reason in
    the incident it opens), and every other pair is decided and alerted in the same run."""
    slot = W + layout.SLOT * 48
    seed(aws, slot - layout.SLOT, {"ETH/USDT": 100.0, "SOL/USDT": 151.0})
    aws.put(
        layout.ingestion_key(slot, ".json", pair="ETH/USDT"), b'{"date": "not a date"}'
    )  # the default pair's record: bad
    land(aws, "SOL/USDT", slot, 149.9)  # crosses 150 downward
    land(aws, "BTC/USDT", slot, 90000.0)

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    assert [alert["Subject"] for alert in aws.alerts()] == ["SOL/USDT crossed 150 downward: 149.90"]
    [ops] = aws.ops()
    assert ops["Subject"] == f"[price pipeline] Record quarantined: ETH/USDT {slot:%Y-%m-%d %H:%M} UTC"
    assert ops["Message"].startswith("- ETH/USDT: quarantined: ")
    assert pair_ledger(aws, slot)["SOL/USDT"]["decision"] == "notified"
    assert "ETH/USDT" not in pair_ledger(aws, slot)


def test_a_late_pairs_key_cannot_forge_a_line_or_a_mention_in_the_ops_message(dag, aws):
    """Issue 21, point 8: a key in the pair folder whose text holds a line break and Slack markup."""
    slot = W + layout.SLOT * 36
    seed(aws, slot - layout.SLOT, {"ETH/USDT": 100.0, "SOL/USDT": 151.0})
    land(aws, "ETH/USDT", slot, 100.1)
    land(aws, "SOL/USDT", slot, 151.1)
    forged = layout.ingestion_key(slot, ".json\r- SOL_USDT: ok <!channel> <https:evil.example|click>", pair="BTC/USDT")
    aws.put(forged, b'{"date": %d, "weightedAverage": "NaN"}' % int(slot.timestamp()))

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    [ops] = aws.ops()
    listed = [line for line in ops["Message"].splitlines() if line.startswith("- ")]
    assert len(listed) == 1  # BTC/USDT's line only: the key's text forged a "- SOL_USDT: ok" line
    assert listed[0].startswith('- BTC/USDT: quarantined: "record 0: weighted_average is not finite')
    assert json.dumps(forged).replace("<", "\\u003c").replace(">", "\\u003e") in listed[0]
    assert "<!channel>" not in ops["Message"]
    assert "<https:evil" not in ops["Message"]


def test_an_old_window_without_a_pair_only_logs_it_late(dag, aws):
    slot = W + layout.SLOT * 24
    seed(aws, slot - layout.SLOT, {"ETH/USDT": 100.0})
    land(aws, "ETH/USDT", slot, 100.1)
    land(aws, "SOL/USDT", slot, 160.0)

    run = run_window(dag, slot)  # an old window, notify_on_backfill off: not due for subscribers

    assert run.state == "success", task_states(run)
    assert aws.alerts() == []
    # BTC/USDT was late, but a window this old is no news for ops: no *Pair late*. SOL/USDT's breach,
    # suppressed only for lateness, is told to ops as the default pair's is (issue 18).
    [ops] = aws.ops()
    assert ops["Subject"] == f"[price pipeline] Alerts not sent: {layout.slot_stamp(slot)}"
    assert "- SOL/USDT rule " in ops["Message"]
    assert list(pair_ledger(aws, slot)) == ["ETH/USDT", "SOL/USDT"]  # every pair's line: BTC/USDT's still open


@pytest.fixture(scope="module")
def bulk_dag(airflow_db):
    import importlib.util

    from tests.conftest import ROOT

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRICE_RULES_FILE", "include/rules/local.json")
        spec = importlib.util.spec_from_file_location("bulk_pairs", ROOT / "dags" / "price_history_backfill.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.price_history_backfill()


def test_the_bulk_dag_with_notify_on_backfill_publishes_another_pairs_due_alert_exactly_once(bulk_dag, aws):
    """Issue 19: the bulk DAG recorded other pairs' firings suppressed_backfill even with notify_on_backfill."""
    from tests.e2e.test_price_history_backfill import run_bulk

    start = W + layout.SLOT * 60
    for i, price in enumerate((149.0, 149.5, 150.5)):  # SOL/USDT crosses 150 in the third window
        slot = start + layout.SLOT * i
        land(aws, "ETH/USDT", slot, 100.0)
        land(aws, "BTC/USDT", slot, 90000.0)
        land(aws, "SOL/USDT", slot, price)
    end = start + layout.SLOT * 3

    run, summary = run_bulk(bulk_dag, start, end, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    [alert] = aws.alerts()
    assert alert["Subject"] == "SOL/USDT crossed 150 upward: 150.50"
    assert "/dags/price_history_backfill/runs/" in alert["Message"]
    assert summary["notified"] == 1
    sol = pair_ledger(aws, start + layout.SLOT * 2)["SOL/USDT"]
    assert (sol["decision"], sol["rules"]["cross-150"]["sns_message_id"]) == ("notified", alert["MessageId"])

    again, _ = run_bulk(bulk_dag, start, end, notify_on_backfill=True)

    assert again.state == "success", task_states(again)
    assert aws.alerts() == []  # once per (pair, rule, window), whichever run
    assert pair_ledger(aws, start + layout.SLOT * 2)["SOL/USDT"] == sol


def test_with_the_ops_topic_gone_every_due_alert_is_still_sent_once(dag, aws):
    """Issue 35: ops told before the publish failed the analysis on a deleted ops topic after the alerts
    were claimed, and nothing was sent. Alerts go first; the ops step after them fails, its notice logged."""
    from local.standin import provision
    from tests.conftest import STANDIN_CREDENTIALS

    slot = W + layout.SLOT * 72
    seed(aws, slot - layout.SLOT, {"ETH/USDT": 100.0, "SOL/USDT": 151.0})
    land(aws, "ETH/USDT", slot, 98.0)  # -2 %
    land(aws, "SOL/USDT", slot, 149.9)  # crosses 150 downward; BTC/USDT is late: a notice for ops
    sns = aws.client("sns")
    sns.delete_topic(TopicArn=aws.config.ops_topic_arn)
    try:
        run = run_window(dag, slot, notify_on_backfill=True)
    finally:
        provision(aws.url, STANDIN_CREDENTIALS)  # the topic and its queue's subscription back

    states = task_states(run)
    assert (states["publish_price_alerts"], states["report_window_to_ops"]) == ("success", "failed"), states
    assert run.state == "failed"  # ops could not be told: the run says so
    assert sorted(alert["Subject"] for alert in aws.alerts()) == [
        "ETH/USDT down 2.00% in 5 min: 98.0000",
        "SOL/USDT crossed 150 downward: 149.90",
    ]
    assert {pair: entry["decision"] for pair, entry in pair_ledger(aws, slot).items()} == {
        "ETH/USDT": "notified",
        "SOL/USDT": "notified",
    }
    run_window(dag, slot, notify_on_backfill=True)
    assert aws.alerts() == []  # once: a re-run sends nothing
