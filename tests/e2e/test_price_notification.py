"""End to end: `dag.test()` runs of price_notification against the local AWS stand-in.

Each test works on its own day so the shared stand-in never mixes their windows. In Airflow 3 a
run's logical date is its data interval's end: the window [slot, slot + 5 min) runs as slot + 5 min.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.price_pipeline import alerts, layout
from local.feed import write_record
from local.soak import default_entry
from tests.conftest import ROOT, utc
from tests.records import candle, seed_normalized

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dag(airflow_db):
    from dags.price_notification import price_notification

    return price_notification()


def run_window(dag, slot, **conf):
    """Run the DAG for the window starting at ``slot``; return the DagRun.

    Every param is passed: in-process runs share the DAG object, and one run's conf would otherwise
    stay in ``dag.params`` for the next.
    """
    return dag.test(logical_date=slot + layout.SLOT, run_conf={**DEFAULT_PARAMS, **conf})


DEFAULT_PARAMS = {
    "notify_on_backfill": False,
    "threshold_pct": 1.0,
    "lookback_minutes": 60,
    "min_abs_move": 0.0,
    "repeat_windows": 0,
}


def task_states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def ledger(aws, slot) -> dict:
    """The default pair's entry of the window, its one rule's fields beside the entry's (local.soak)."""
    return default_entry(aws.get(layout.pairs_ledger_key(slot)))


def test_breaching_window_publishes_exactly_one_alert_with_the_right_numbers(dag, aws):
    slot = utc(2026, 1, 5, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 102.5), "xml", pair="ETH/USDT")

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    [alert] = aws.alerts()
    assert alert["Subject"] == "ETH/USDT up 2.50% in 5 min: 102.50"
    assert "Reference: 100.00 at 2026-01-05T09:55:00Z" in alert["Message"]  # one alert text for every pair
    assert "Latest:    102.50 at 2026-01-05T10:00:00Z" in alert["Message"]
    assert "(rule move-5m: |change| 2.5000% over 5 min > threshold 1.0%)" in alert["Message"]
    assert alert["MessageAttributes"]["direction"] == {"Type": "String", "Value": "up"}
    assert alert["MessageAttributes"]["change_pct"] == {"Type": "Number", "Value": "2.5"}
    entry = ledger(aws, slot)
    assert entry["decision"] == "notified"
    assert entry["sns_message_id"] == alert["MessageId"]
    assert entry["change_pct"] == pytest.approx(2.5)
    assert aws.ops() == []


def test_calm_window_sends_nothing_and_records_below_threshold(dag, aws):
    slot = utc(2026, 1, 6, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 100.4), "txt", pair="ETH/USDT")

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    assert task_states(run)["publish_price_alerts"] == "skipped"
    assert aws.alerts() == []
    assert ledger(aws, slot)["decision"] == "below_threshold"
    assert aws.ops() == []


def test_the_dag_params_override_the_default_pairs_rule_for_one_run(dag, aws):
    """The params are per-run overrides of the default pair's rule in the rules file (``rules.with_overrides``):
    a 2.5 % move alerts under the file's 1 % threshold, not under a run's 3 %, nor with its min_abs_move."""
    slot = utc(2026, 1, 27, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 102.5), "json", pair="ETH/USDT")

    higher = run_window(dag, slot, notify_on_backfill=True, threshold_pct=3.0)

    assert higher.state == "success", task_states(higher)
    entry = ledger(aws, slot)
    assert (entry["decision"], entry["threshold_pct"]) == ("below_threshold", 3.0)
    assert entry["reason"] == "|change| 2.5000% <= threshold 3.0%"
    run_window(dag, slot, notify_on_backfill=True, min_abs_move=5.0)
    assert (ledger(aws, slot)["decision"], ledger(aws, slot)["reason"]) == (
        "below_min_abs_move",
        "absolute move below min_abs_move 5",
    )
    assert aws.alerts() == []
    run_window(dag, slot, notify_on_backfill=True)  # the file's rule
    assert ledger(aws, slot)["decision"] == "notified"
    assert len(aws.alerts()) == 1


def parse_dag_with(monkeypatch, name: str, dag_id: str = "price_notification", **env: str):
    """A fresh DAG (``dags/<dag_id>.py``, default price_notification) parsed with extra deployment settings
    in the environment."""
    import importlib.util

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(name, ROOT / "dags" / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, dag_id)()


@pytest.fixture
def poking_dag(airflow_db, monkeypatch):
    """The DAG parsed with PRICE_DEFERRABLE=false: dag.test() runs triggers inline and ignores their
    timeout, so only a poking sensor shows the timeout path there (a triggerer enforces it live)."""
    dag = parse_dag_with(monkeypatch, "price_notification_poking", PRICE_DEFERRABLE="false")
    assert dag.get_task("wait_for_price_record").deferrable is False
    return dag


def test_a_live_windows_missing_record_times_out_the_sensor_and_tells_ops_the_feed_is_stale(poking_dag, aws):
    """The window being written now: its run waits the sensor timeout (6 s here) before it gives up."""
    slot = layout.slot_start(datetime.now(UTC))

    run = run_window(poking_dag, slot)

    assert run.state == "failed"
    assert task_states(run)["wait_for_price_record"] == "failed"
    assert aws.alerts() == []
    [ops] = aws.ops()
    assert ops["Subject"].startswith(f"[price pipeline] Feed stale: wait_for_price_record {slot:%Y-%m-%d %H:%M}")
    assert f"no price record arrived for window {slot:%Y-%m-%d}" in ops["Message"]


def test_a_past_windows_missing_record_is_looked_for_once_and_the_run_ends_with_the_reason_not_a_page(
    poking_dag, aws, capfd
):
    """A window that ended longer ago than the sensor timeout: its record should be there. The run lists
    once, skips the window naming it and what was listed, and pages nobody (the feed is not stale now)."""
    slot = utc(2026, 1, 7, 10, 0)

    run = run_window(poking_dag, slot)

    assert run.state == "success"
    assert set(task_states(run).values()) == {"skipped"}
    assert aws.alerts() == []
    assert aws.ops() == []
    skips = [line for line in capfd.readouterr().out.splitlines() if "Skipping task." in line]
    [reason] = [line for line in skips if "no record for window" in line]  # the sensor's; publish: nothing due
    assert f"no record for window {layout.slot_stamp(slot)}: nothing matches s3://" in reason
    assert layout.ingestion_window_prefix(slot) in reason
    assert "looked once" in reason


def test_running_a_window_again_writes_identical_objects_and_never_notifies_twice(dag, aws):
    slot = utc(2026, 1, 8, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 97.0), "csv", pair="ETH/USDT")

    first = run_window(dag, slot, notify_on_backfill=True)
    after_first = aws.snapshot("crypto/")
    second = run_window(dag, slot, notify_on_backfill=True)
    after_second = aws.snapshot("crypto/")

    assert first.state == second.state == "success"
    assert after_second == after_first
    alerts = aws.alerts()
    assert len(alerts) == 1
    assert alerts[0]["Subject"].startswith("ETH/USDT down 3.00%")
    assert task_states(second)["publish_price_alerts"] == "skipped"


def test_old_window_is_recorded_as_suppressed_without_notify_on_backfill(dag, aws):
    slot = utc(2026, 1, 9, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 105.0), "json", pair="ETH/USDT")

    run = run_window(dag, slot)

    assert run.state == "success", task_states(run)
    assert aws.alerts() == []
    entry = ledger(aws, slot)
    assert entry["decision"] == "suppressed_backfill"
    assert "max_alert_age" in entry["reason"]
    [ops] = aws.ops()
    assert ops["Subject"] == "[price pipeline] Alerts not sent: 20260109T1000Z"
    assert ops["Message"].startswith("Breaches of window 20260109T1000Z not sent: window ended more than max_alert_age")
    assert "- ETH/USDT rule move-5m: +5.00% (change)" in ops["Message"]


def test_quarantined_record_fails_with_its_reason_and_the_next_window_compares_with_the_last_good(dag, aws):
    slot = utc(2026, 1, 10, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    bad_key = layout.ingestion_key(slot, ".json", pair="ETH/USDT")
    bad_body = b'{"date": %d, "weightedAverage": "NaN"}' % int(slot.timestamp())
    aws.put(bad_key, bad_body)
    write_record(aws.s3, aws.config.bucket, candle(slot + layout.SLOT, 103.0), "xml", pair="ETH/USDT")

    bad = run_window(dag, slot, notify_on_backfill=True)
    good = run_window(dag, slot + layout.SLOT, notify_on_backfill=True)

    assert bad.state == "failed"
    states = task_states(bad)
    assert states["normalize_price_record"] == "success"
    assert states["analyse_pairs"] == "failed"
    assert aws.get(bad_key) == bad_body, "the original must stay untouched"
    [reason_key] = [
        k for k in aws.keys(layout.QUARANTINE_PREFIX + layout.partition(slot)) if k.endswith(".reason.json")
    ]
    reason = json.loads(aws.get(reason_key))
    assert reason["source_key"] == bad_key
    assert "not finite" in reason["reason"]
    [ops, resolved] = aws.ops()  # an incident: the good window resolves it
    assert ops["Subject"].startswith("[price pipeline] Record quarantined")
    assert "not finite" in ops["Message"]
    assert resolved["Subject"] == "[price pipeline] Resolved, record quarantined: analyse_pairs after 5 min, 1 window"

    assert good.state == "success", task_states(good)
    [alert] = aws.alerts()
    assert alert["Subject"] == "ETH/USDT up 3.00% in 10 min: 103.00"
    assert ledger(aws, slot + layout.SLOT)["previous"]["timestamp"] == "2026-01-10T09:55:00Z"


@pytest.fixture
def slack_receiver():
    """A local HTTP server standing in for Slack's incoming webhook; yields (url, received bodies)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/services/T0/B0/local", received
    server.shutdown()


def test_a_quarantined_keys_text_cannot_forge_a_line_or_a_mention_in_the_ops_message(dag, aws):
    """Issue 21, point 8: the default pair's failure reason quotes the key, escaped, on one line."""
    slot = utc(2026, 1, 13, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    forged = layout.ingestion_key(
        slot, ".json\r- forged: all good <!channel> <https:evil.example|click>", pair="ETH/USDT"
    )
    aws.put(forged, b'{"date": %d, "weightedAverage": "NaN"}' % int(slot.timestamp()))

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "failed"
    [ops] = aws.ops()
    assert ops["Subject"].startswith("[price pipeline] Record quarantined")
    assert not any(line.startswith("- forged") for line in ops["Message"].splitlines())
    assert "<!channel>" not in ops["Message"]
    assert "<https:evil" not in ops["Message"]
    quoted = json.dumps(forged).replace("<", "\\u003c").replace(">", "\\u003e")
    assert f"(object {quoted})" in ops["Message"]


def test_slack_gets_the_same_alert_when_a_webhook_connection_is_configured(
    airflow_db, aws, monkeypatch, slack_receiver
):
    url, received = slack_receiver
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "slackwebhook", "password": url}))
    dag = parse_dag_with(monkeypatch, "price_notification_slack", PRICE_SLACK_CONN_ID="slack_alerts")
    slot = utc(2026, 1, 11, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 98.0), "json", pair="ETH/USDT")

    run = run_window(dag, slot, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    [alert] = aws.alerts()
    [posted] = received
    assert posted["text"].startswith(f"*{alert['Subject']}*")
    assert "Reference: 100.00 at 2026-01-11T09:55:00Z" in posted["text"]


def test_slack_gets_the_ops_incidents_the_ops_topic_gets(airflow_db, aws, monkeypatch, slack_receiver):
    """Issue 38: one incident, its messages on the ops topic and in Slack alike (opened, then resolved)."""
    url, received = slack_receiver
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "slackwebhook", "password": url}))
    dag = parse_dag_with(monkeypatch, "price_notification_slack_ops", PRICE_SLACK_CONN_ID="slack_alerts")
    slot = utc(2026, 1, 14, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    aws.put(layout.ingestion_key(slot, ".json", pair="ETH/USDT"), b'{"date": %d, "weightedAverage": "NaN"}' % int(
        slot.timestamp()))  # fmt: skip
    write_record(aws.s3, aws.config.bucket, candle(slot + layout.SLOT, 100.1), "json", pair="ETH/USDT")

    assert run_window(dag, slot, notify_on_backfill=True).state == "failed"
    assert run_window(dag, slot + layout.SLOT, notify_on_backfill=True).state == "success"

    ops = aws.ops()
    assert [message["Subject"] for message in ops] == [
        "[price pipeline] Record quarantined: analyse_pairs 2026-01-14 10:00 UTC",
        "[price pipeline] Resolved, record quarantined: analyse_pairs after 5 min, 1 window",
    ]
    assert [posted["text"] for posted in received] == [
        alerts.slack_text(message["Subject"], message["Message"]) for message in ops
    ]


def test_a_retried_publish_task_does_not_notify_again(dag, aws):
    """Re-run only publish_price_alerts of a notified run (its one mapped instance), as a retry or a task
    clear would."""
    import subprocess
    import sys

    slot = utc(2026, 1, 12, 10, 0)
    seed_normalized(aws.s3, aws.config.bucket, candle(slot - layout.SLOT, 100.0))
    write_record(aws.s3, aws.config.bucket, candle(slot, 101.5), "json", pair="ETH/USDT")
    run = run_window(dag, slot, notify_on_backfill=True)
    assert run.state == "success", task_states(run)
    assert len(aws.alerts()) == 1

    retry = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "tasks",
            "test",
            "price_notification",
            "publish_price_alerts",
            run.run_id,
            "--map-index",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )

    assert "already notified as SNS message" in retry.stdout + retry.stderr, retry.stderr[-3000:]
    assert aws.alerts() == []
    assert ledger(aws, slot)["decision"] == "notified"
