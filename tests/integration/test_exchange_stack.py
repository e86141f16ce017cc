"""``make run FEED=exchange`` on its own stack (local/run.py ``start`` with the exchange stand-in, on free
ports in a temporary folder): the feed DAG's first scheduled run writes every pair's candle of the latest
closed window, and price_notification's run of that window decides every pair from them; ``make backfill
FETCH=1`` fetches a range nobody wrote, then backfills it with every window done."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from include.price_pipeline import layout, ledger, settings
from local import run
from local.stack import free_port, isolated
from tests.conftest import make_backfill

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
#: make run's history backfill, shorter than its hour: each window is a native run of every task (CPU the
#: suite's other stacks share); what is checked is that it is created, listed and waited for.
HISTORY_WINDOWS = 3

PAIRS = {"ETH/USDT", "BTC/USDT", "SOL/USDT"}  # include/rules/local.json, make run's


@pytest.fixture(scope="module")
def stack(stack_dir):
    # The live window's run waits for the feed's records as by default (the suite's environment says 6 s).
    waits = {"PRICE_SENSOR_TIMEOUT_SECONDS": "900", "PRICE_PAIRS_DEADLINE_SECONDS": "120"}
    stack = isolated(
        stack_dir, exchange_port=free_port(), extra_env={"PRICE_RULES_FILE": run.LOCAL_RULES_FILE, **waits}
    )
    try:
        run.start(stack, log=lambda *args, **kwargs: None, history_windows=HISTORY_WINDOWS, exchange=True)
        yield stack
    finally:
        stack.stop()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
        time.sleep(2)
    return found


def test_the_feeds_first_run_writes_every_pairs_candle_and_the_window_is_decided(stack):
    def feed_done():
        runs = [r for r in stack.run_states(run.FEED_DAG_ID) if r[1] == "scheduled"]
        return runs[0] if runs and runs[0][2] in ("success", "failed") else None

    run_id, _, state = wait_for(feed_done, 300, "the feed's first scheduled run")
    assert state == "success", stack.query("SELECT task_id, state FROM task_instance WHERE run_id = %s", run_id)
    [(slot,)] = stack.query("SELECT data_interval_start FROM dag_run WHERE dag_id = %s AND run_id = %s",
                            run.FEED_DAG_ID, run_id)  # fmt: skip
    config = settings.load(stack.env())
    s3 = stack.client("s3")
    prefix = layout.ingestion_window_prefix(slot, config.ingestion_prefix)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=config.bucket, Prefix=prefix).get("Contents", [])]
    assert len(keys) == len(PAIRS), keys

    ledger_key = layout.pairs_ledger_key(slot, config.changes_prefix)

    def decided():
        try:
            return ledger.parse_entries(s3.get_object(Bucket=config.bucket, Key=ledger_key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    entries = wait_for(decided, 300, f"price_notification's decision of {slot:%H:%M}")
    assert set(entries) == PAIRS
    assert all(entry["latest"]["timestamp"] == layout.iso(slot) for entry in entries.values())


def test_make_backfill_fetch_fetches_a_range_nobody_wrote_then_backfills_it(stack, monkeypatch):
    latest = layout.slot_start(datetime.now(UTC)) - layout.SLOT * 30  # before make run's hour
    first = latest - layout.SLOT * 2
    stamp = "%Y-%m-%dT%H:%M"

    code, out = make_backfill(stack, monkeypatch, "--from", first.strftime(stamp), "--to", latest.strftime(stamp),
                              "--fetch")  # fmt: skip

    assert code == 0, out
    assert "  ETH/USDT: 3 written, 0 had a record, 0 not served by the exchange" in out
    assert "Backfill" in out
    assert "3 of 3 windows succeeded" in out
