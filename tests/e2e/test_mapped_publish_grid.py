"""The brief's SNS publish operator as the Airflow UI shows it, on the local stack (scheduler, triggerer,
LocalExecutor, stand-in, API server): a window where three pairs fire runs ``publish_price_alerts`` as
three mapped task instances of the provider's ``SnsPublishOperator``, each named by its alert's subject,
each returning its SNS message id, the one the ledger recorded. Headless Chromium logs in and opens the
mapped task's page; with ``PRICE_GRID_SCREENSHOT=<path>`` it saves a screenshot there (``make screenshot``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from include.price_pipeline import layout, ledger
from local import soak
from local.api import Api
from local.feed import write_record
from local.stack import isolated, log_in
from tests.conftest import utc
from tests.e2e.test_price_alerts_page import chromium_path
from tests.records import candle, seed_normalized, seed_pairs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LIVE = "price_notification"
W = utc(2026, 3, 31, 10, 0)  # a day no other test writes
SUBJECTS = [
    "BTC/USDT up 1.11% in 15 min: 91,000.00",
    "ETH/USDT up 2.50% in 5 min: 102.50",
    "SOL/USDT crossed 150 upward: 150.50",
]


@pytest.fixture(scope="module")
def stack(stack_dir):
    with isolated(stack_dir, extra_env={"PRICE_RULES_FILE": "include/rules/local.json"}).running(
        unpause=(LIVE,)
    ) as stack:
        yield stack


def every_local_pair_fires(stack, window, run: str) -> str:
    """One run ``run`` of ``window`` (triggered for it through the REST API, notifying) in which every pair of
    the local rules fires, as SUBJECTS say; returns once it ended."""
    s3 = stack.client("s3")
    seed_normalized(s3, soak.BUCKET, candle(window - layout.SLOT, 100.0))
    seed_pairs(s3, soak.BUCKET, window - layout.SLOT * 3, {"BTC/USDT": 90000.0})
    seed_pairs(s3, soak.BUCKET, window - layout.SLOT, {"BTC/USDT": 90500.0, "SOL/USDT": 149.0})
    write_record(s3, soak.BUCKET, candle(window, 102.5), "json", pair="ETH/USDT")  # +2.5 % in 5 min
    write_record(s3, soak.BUCKET, candle(window, 91000.0), "json", pair="BTC/USDT")  # +1.11 % in 15 min
    write_record(s3, soak.BUCKET, candle(window, 150.5), "json", pair="SOL/USDT")  # crosses 150 upward
    body = {"dag_run_id": run, "logical_date": window.isoformat(), "data_interval_start": window.isoformat(),
            "data_interval_end": (window + layout.SLOT).isoformat(), "conf": {"notify_on_backfill": True}}  # fmt: skip
    Api(stack).call("POST", f"/api/v2/dags/{LIVE}/dagRuns", body)
    soak.wait_for(lambda: soak.run_state(stack, run) in ("success", "failed"), stack=stack, what="the run")
    return run


@pytest.fixture(scope="module")
def run_id(stack) -> str:
    """One run of window W in which every pair of the local rules fires."""
    return every_local_pair_fires(stack, W, "grid__" + layout.slot_stamp(W))


def test_a_window_of_three_alerts_publishes_through_three_mapped_sns_publish_instances(stack, run_id):
    aws = soak.aws_clients(stack)
    instances = stack.query(
        "SELECT map_index, rendered_map_index, state FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s AND task_id = 'publish_price_alerts' ORDER BY map_index",
        LIVE,
        run_id,
    )
    returned = stack.query(
        "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s "
        "AND task_id = 'publish_price_alerts' AND key = 'return_value' ORDER BY map_index",
        LIVE,
        run_id,
    )

    entries = ledger.parse_entries(
        aws["s3"].get_object(Bucket=soak.BUCKET, Key=layout.pairs_ledger_key(W))["Body"].read()
    )
    decided = {
        pair: {name: rule["decision"] for name, rule in entry["rules"].items()} for pair, entry in entries.items()
    }
    expected = {"BTC/USDT": {"move-15m": "notified"}, "ETH/USDT": {"move-5m": "notified"},
                "SOL/USDT": {"cross-150": "notified"}}  # fmt: skip
    assert decided == expected, [entry["rules"] for entry in entries.values()]
    assert soak.run_state(stack, run_id) == "success", instances
    assert [(index, state) for index, _, state in instances] == [(0, "success"), (1, "success"), (2, "success")]
    assert sorted(name for _, name, _ in instances) == SUBJECTS  # the grid names each instance by its alert
    alerts = soak.receive_all(aws["sqs"], soak.queue_url(aws["sqs"], "price-alerts"))
    assert sorted(alert["Subject"] for alert in alerts) == SUBJECTS  # once each
    recorded = {rule["sns_message_id"] for entry in entries.values() for rule in entry["rules"].values()} - {None}
    values = [value if isinstance(value, dict) else json.loads(value) for _, value in returned]
    assert {value["sns_message_id"] for value in values} == recorded == {alert["MessageId"] for alert in alerts}


def test_the_grid_shows_the_mapped_publish_named_by_subject(stack, run_id):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        log_in(page, stack, f"{stack.ui_url}/dags/{LIVE}/runs/{run_id}/tasks/publish_price_alerts/mapped")
        for subject in SUBJECTS:
            page.get_by_text(subject).first.wait_for(timeout=60_000)
        if target := os.environ.get("PRICE_GRID_SCREENSHOT"):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=target, full_page=False)
        browser.close()
