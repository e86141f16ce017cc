"""The Price alerts page for other pairs in a real browser: Airflow's API app with this repository's plugin,
served by uvicorn on loopback (the page reads the ledger, so no scheduler is needed), logged in with the
UI's cookie, driven through Debian's Chromium by Playwright.

A crossing rule is drawn as what it is: its level as a line on the price chart, a marker on each window
where it fired and none where the price only moved (it was drawn as a % rule with threshold 0, so every
window that moved had a "not sent" marker, and no level line). A pair with two rules shows one marker per
rule that fired.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from include.price_pipeline import layout, ledger, rules
from local.stack import free_port
from tests.conftest import utc
from tests.e2e.test_price_alerts_page import chromium_path
from tests.records import seed_pairs

pytestmark = pytest.mark.e2e

T0 = utc(2026, 3, 24, 10, 0)  # a day no other test writes
RULES = {
    "default_pair": "ETH/USDT",
    "pairs": {
        "ETH/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "tolerance_minutes": 55}],
        "SOL/USDT": [{"name": "cross-150", "kind": "crossing", "level": 150, "tolerance_minutes": 55}],
        "BTC/USDT": [
            {"name": "move-5m", "kind": "change", "threshold_pct": 1.0},
            {"name": "cross-100k", "kind": "crossing", "level": 100000},
        ],
    },
}
SOL = (149.0, 151.0, 152.5, 153.0, 149.5, 148.0, 146.5, 150.2)  # crosses at 1 (up), 4 (down), 7 (up)
BTC = (99000.0, 101000.0, 101500.0, 99900.0, 99950.0)  # 1: +2.02 % and crosses; 3: -1.58 % and crosses
RANGE = f"start={layout.iso(T0)}&end={layout.iso(T0 + layout.SLOT * len(SOL))}"


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "page-pairs.json"
    path.write_text(json.dumps(RULES))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRICE_RULES_FILE", str(path))
        yield path


@pytest.fixture(scope="module")
def decided(rules_file, aws_session):
    """Each window decided by the pipeline's own analyse_pairs, as a backfill run (fired: not sent)."""
    rule_set = rules.load(rules_file)
    for index, slot in enumerate(layout.slots_between(T0, T0 + layout.SLOT * len(SOL))):
        prices = {"SOL/USDT": SOL[index]} | ({"BTC/USDT": BTC[index]} if index < len(BTC) else {})
        seed_pairs(aws_session.s3, aws_session.config.bucket, slot, prices)
        ledger.analyse_pairs(aws_session.s3, aws_session.config, rule_set, slot, False, "backfill run", "u", "r")
    return aws_session


@pytest.fixture(scope="module")
def server(airflow_db, standin, rules_file):
    """Airflow's API app (the plugin inside it) on a loopback port; its base URL and a UI login token."""
    import uvicorn
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    app = create_app()
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    port = free_port()
    served = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not served.started:
        assert thread.is_alive(), "the API app stopped"
        assert time.monotonic() < deadline, "the API app did not start in 60 s"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", token
    served.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def page(server, decided):
    """A logged-in browser page; ``page.open(pair)`` shows the range for ``pair``."""
    from playwright.sync_api import sync_playwright

    base, token = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        context = browser.new_context(viewport={"width": 1300, "height": 1200})
        context.add_cookies([{"name": "_token", "value": token, "url": base}])
        page = context.new_page()
        page.problems = []
        page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: page.problems.append(str(error)))

        def show(pair: str):
            page.goto(f"{base}/price-alerts/?{RANGE}&pair={pair}")
            page.wait_for_selector("body[data-state=complete]")

        page.open = show
        yield page
        browser.close()


def markers(page) -> list[tuple[str, str, str, str]]:
    """(window, rule, direction, sent or unsent) of every marker on the price chart."""
    found = []
    for marker in page.locator("#price-chart path.marker").all():
        classes = marker.get_attribute("class").split()
        direction = "up" if "up" in classes else "down"
        found.append((marker.get_attribute("data-window"), marker.get_attribute("data-rule"), direction,
                      "sent" if "sent" in classes else "unsent"))  # fmt: skip
    return sorted(found)


def at(index: int) -> str:
    return layout.iso(T0 + layout.SLOT * index)


def test_a_crossing_pair_shows_its_level_and_a_marker_only_where_it_crossed(page):
    page.open("SOL/USDT")

    assert markers(page) == [
        (at(1), "cross-150", "up", "unsent"),
        (at(4), "cross-150", "down", "unsent"),
        (at(7), "cross-150", "up", "unsent"),
    ]
    level = page.locator("#price-chart path.level")
    assert level.count() == 1
    assert level.get_attribute("data-level") == "150"
    assert level.locator("title").text_content() == "level 150"
    assert page.locator("#change-chart rect.band").count() == 0  # no change rule: no threshold band
    assert page.locator("#change-chart path.bars.within").get_attribute("d") != "M0,0"  # 2, 3, 5, 6 moved
    assert page.problems == []


def test_a_pair_with_two_rules_shows_one_marker_per_rule_that_fired(page):
    page.open("BTC/USDT")

    assert markers(page) == [
        (at(1), "cross-100k", "up", "unsent"),
        (at(1), "move-5m", "up", "unsent"),
        (at(3), "cross-100k", "down", "unsent"),
        (at(3), "move-5m", "down", "unsent"),
    ]
    assert page.locator("#price-chart path.level").get_attribute("data-level") == "100000"
    assert page.locator("#change-chart rect.band title").text_content() == "threshold ±1%"
    assert page.problems == []
