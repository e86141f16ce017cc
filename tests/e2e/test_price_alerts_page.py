"""The Price alerts page in a real browser on a real local stack.

Two hours of real records go through the bulk history DAG, then a native backfill (notifying) runs
three windows: an up breach, a quarantined record, a down breach. Headless Chromium (Debian's, driven
by Playwright) logs in through the UI's login page, opens the page and checks what a user would look
for. With ``PRICE_ALERTS_SCREENSHOT=<path>`` it also saves a screenshot there (``make screenshot``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from include.price_pipeline import layout, settings
from local.api import Api, backfill_when_free, wait_for_backfill
from local.feed import write_record
from local.stack import isolated, log_in
from tests.records import candle

pytestmark = pytest.mark.e2e

LIVE, BULK = "price_notification", "price_history_backfill"
BULK_START = datetime(2026, 2, 10, 8, 0, tzinfo=UTC)
FIRST = datetime(2026, 2, 10, 10, 0, tzinfo=UTC)  # up breach; then quarantined; then down breach
UP, BAD, DOWN = FIRST, FIRST + layout.SLOT, FIRST + 2 * layout.SLOT
PAGE_RANGE = "start=2026-02-10T08:00Z&end=2026-02-10T11:00Z"


def iso(slot: datetime) -> str:
    return slot.strftime("%Y-%m-%dT%H:%M:%SZ")


def wait(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `make browser` installs it")
    return path


@pytest.fixture(scope="module")
def stack(stack_dir):
    env = {"PRICE_SENSOR_TIMEOUT_SECONDS": "30", "PRICE_SENSOR_POKE_SECONDS": "2"}
    with isolated(stack_dir, extra_env=env).running(unpause=(LIVE, BULK)) as stack:
        yield stack


@pytest.fixture(scope="module")
def runs(stack) -> dict[str, str]:
    """Real runs over the windows; returns ``{window start: run id}`` of the native ones."""
    bucket = settings.load({}).bucket
    s3 = stack.client("s3")
    walk = [100.0 + 0.3 * ((index * 7) % 5 - 2) for index in range(23)] + [100.0]
    for index, price in enumerate(walk):
        write_record(s3, bucket, candle(BULK_START + layout.SLOT * index, price), pair="ETH/USDT")
    write_record(s3, bucket, candle(UP, 102.0), pair="ETH/USDT")
    bad = b'{"date": %d, "weightedAverage": "NaN"}' % int(BAD.timestamp())
    s3.put_object(Bucket=bucket, Key=layout.ingestion_key(BAD, ".json", pair="ETH/USDT"), Body=bad)
    write_record(s3, bucket, candle(DOWN, 99.0), pair="ETH/USDT")

    conf = {"start": iso(BULK_START), "end": iso(FIRST)}
    stack.airflow("dags", "trigger", BULK, "--conf", json.dumps(conf))
    wait(lambda: [s for *_, s in stack.run_states(BULK)] == ["success"], "the bulk run")

    backfill = backfill_when_free(stack, Api(stack), UP, DOWN, notify=True, report=lambda line: None)
    wait_for_backfill(stack, backfill, timeout=900, report=lambda line: None)
    found = stack.query(
        "SELECT run_id, data_interval_start, state FROM dag_run WHERE dag_id = %s AND run_type = 'backfill'", LIVE
    )
    states = {str(start)[:16]: state for _, start, state in found}
    assert states == {"2026-02-10 10:00": "success", "2026-02-10 10:05": "failed", "2026-02-10 10:10": "success"}
    return {str(start)[:16].replace(" ", "T") + ":00Z": run_id for run_id, start, _ in found}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield browser
        browser.close()


def test_the_page_shows_the_alerts_their_runs_and_the_quarantine(stack, runs, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 1400})
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    log_in(page, stack, f"{stack.ui_url}/price-alerts/?{PAGE_RANGE}")
    page.wait_for_selector("body[data-state=complete]")

    up = page.locator(f'path.marker.up.sent[data-window="{iso(UP)}"]')
    assert up.get_attribute("data-decision") == "notified"
    assert "notified: 2.00% at 102.0000" in up.locator("title").text_content()
    assert page.locator(f'path.marker.down.sent[data-window="{iso(DOWN)}"]').count() == 1
    row = page.locator(f'#windows tr[data-window="{iso(UP)}"]')
    assert row.locator("td").nth(4).text_content() == "notified"
    assert row.locator("a.run").get_attribute("href") == f"/dags/{LIVE}/runs/{quote(runs[iso(UP)], safe='')}"
    bulk_link = page.locator(f'#windows tr[data-window="{iso(BULK_START)}"] a.run').get_attribute("href")
    assert bulk_link.startswith(f"/dags/{BULK}/runs/")
    assert page.locator('#windows tr[data-window="2026-02-10T10:30:00Z"] td').nth(4).text_content() == "missing"
    quarantined = page.locator(f'#quarantine tr[data-window="{iso(BAD)}"]')
    assert "not finite" in quarantined.text_content()
    assert layout.QUARANTINE_PREFIX in quarantined.text_content()
    assert page.locator(f'#windows tr[data-window="{iso(BAD)}"] td').nth(4).text_content() == "quarantined"

    page.select_option("#decision", "notified")
    assert page.locator("#windows tbody tr").count() == 2

    if target := os.environ.get("PRICE_ALERTS_SCREENSHOT"):
        page.select_option("#decision", "")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=target, full_page=False)

    row.locator("a.run").click()
    page.wait_for_url(f"**/dags/{LIVE}/runs/**")
    assert problems == []


def test_the_page_over_a_year_lists_the_alerts_and_draws_the_rest(stack, runs, browser):
    """Issue 37: a year is 105,120 windows; the page draws them (the quiet ones as the chart's envelope),
    counts them all and lists the windows where a rule may have fired, with their ledger entries and runs."""
    page = browser.new_page(viewport={"width": 1300, "height": 1400})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))

    log_in(page, stack, f"{stack.ui_url}/price-alerts/?start=2025-02-11T00:00Z&end=2026-02-11T00:00Z")
    page.wait_for_selector("body[data-state=complete]")

    assert ": 105120 windows (" in page.locator("#status").text_content()
    counts = {span.get_attribute("data-decision"): span.text_content() for span in page.locator("#counts span").all()}
    assert int(counts["missing"].split(": ")[1]) > 105_000
    assert page.locator(f'path.marker.up.sent[data-window="{iso(UP)}"]').count() == 1
    assert page.locator(f'path.marker.down.sent[data-window="{iso(DOWN)}"]').count() == 1
    row = page.locator(f'#windows tr[data-window="{iso(UP)}"]')
    assert row.locator("td").nth(4).text_content() == "notified"
    assert row.locator("a.run").get_attribute("href") == f"/dags/{LIVE}/runs/{quote(runs[iso(UP)], safe='')}"
    listed = page.locator("#windows tbody tr").count()
    assert 2 <= listed < 24  # the breaches, not the bulk run's quiet windows
    assert "V" in page.locator("path.price").get_attribute("d")  # drawn as the envelope: a step per pixel column
    assert problems == []


def test_the_ui_shows_the_page_in_its_navigation_and_on_the_dag_run(stack, runs, browser):
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))

    log_in(page, stack, f"{stack.ui_url}/plugin/price-alerts")
    frame = page.frame_locator("iframe[title='Price alerts']")
    frame.locator("body[data-state=complete]").wait_for()
    assert page.get_by_role("link", name="Price alerts").count() + page.get_by_text("Price alerts").count() > 0

    run_id = runs[iso(DOWN)]
    page.goto(f"{stack.ui_url}/dags/{LIVE}/runs/{run_id}/plugin/price-window")
    window_frame = page.frame_locator("iframe[title='Price window']")
    window_frame.locator("body[data-state=complete]").wait_for()
    assert window_frame.locator(f'#windows tr.focus[data-window="{iso(DOWN)}"]').count() == 1

    # A run link inside the UI's (sandboxed) iframe opens the run in the UI itself, not in the frame.
    window_frame.locator(f'#windows tr[data-window="{iso(UP)}"] a.run').click()
    page.wait_for_url(lambda url: unquote(url).endswith(f"/dags/{LIVE}/runs/{runs[iso(UP)]}"))
    assert page.locator("iframe[title='Price window']").count() == 0
    assert problems == []
