"""The Price alerts plugin inside Airflow's own API app: same login as the UI, read-only, no remote source.

Airflow's API server app is built in-process (with the plugins folder of this repo) and called over
ASGI; the data comes from the stand-in through the Airflow AWS connection.
"""

from __future__ import annotations

import json

import pytest

from include.price_pipeline import layout, ledger, rules
from include.price_pipeline.analysis import Price
from tests.conftest import utc

pytestmark = pytest.mark.integration

SLOT = utc(2026, 3, 20, 10, 0)
RANGE = "start=2026-03-20T10:00Z&end=2026-03-20T10:30Z"


@pytest.fixture(scope="module")
def client(airflow_db, standin):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app(), base_url="http://127.0.0.1:8080") as client:
        yield client


@pytest.fixture(scope="module")
def token(client) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


def test_data_without_a_login_is_401_and_with_a_forged_token_403(client):
    assert client.get(f"/price-alerts/api/history?{RANGE}").status_code == 401
    assert client.get(f"/price-alerts/api/ledger?{RANGE}").status_code == 401
    assert client.get("/price-alerts/static/page.js").status_code == 401
    forged = client.get(f"/price-alerts/api/history?{RANGE}", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 403


def test_the_page_without_a_login_redirects_to_the_login_page_and_back(client):
    response = client.get("/price-alerts/?start=2026-03-20T10:00Z", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == (
        "/auth/login?next=http%3A%2F%2F127.0.0.1%3A8080%2Fprice-alerts%2F%3Fstart%3D2026-03-20T10%3A00Z"
    )
    expired = client.get("/price-alerts/", cookies={"_token": "forged"}, follow_redirects=False)
    assert expired.status_code == 303


def test_with_the_ui_cookie_the_page_and_its_data_are_served_with_a_strict_csp(client, token, aws):
    previous, latest = Price(SLOT - layout.SLOT, 100.0, "ETH/USDT", "a"), Price(SLOT, 103.0, "ETH/USDT", "b")
    rule = rules.load(rules.DEFAULT_RULES_FILE).default_rule
    decided = rules.Decision(rule.name, rule.kind, "notify", "r", "up", 3.0, previous)
    entry = ledger.pair_entry("ETH/USDT", SLOT, latest, (rule,), {rule.name: decided}, True, "")
    state = {"decision": "notified", "reason": "<img src=x onerror=alert(1)>", "sns_message_id": "m-1"}
    entry |= {"decision": "notified", "rules": {rule.name: entry["rules"][rule.name] | state}}
    aws.put(layout.pairs_ledger_key(SLOT), ledger.entries_bytes({"ETH/USDT": entry}))
    client.cookies.set("_token", token)
    try:
        page = client.get("/price-alerts/")
        data = client.get(f"/price-alerts/api/history?{RANGE}")
        script = client.get("/price-alerts/static/page.js")
    finally:
        client.cookies.clear()

    assert page.status_code == 200
    assert "<title>Price alerts</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "http" not in csp
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert data.status_code == 200
    [row, *rest] = data.json()["windows"]
    assert (row["decision"], row["sns_message_id"], row["reason"]) == (
        "notified",
        "m-1",
        f"{rule.name}: <img src=x onerror=alert(1)>",
    )
    assert [r["decision"] for r in rest] == ["missing"] * 5


def test_the_plugin_is_read_only_and_refuses_bad_ranges(client, token):
    headers = {"Authorization": f"Bearer {token}"}

    assert client.post("/price-alerts/api/history", headers=headers).status_code == 405
    assert client.delete("/price-alerts/", headers=headers).status_code == 405
    too_long = client.get("/price-alerts/api/history?start=2025-01-01T00:00Z&end=2026-03-01T00:00Z", headers=headers)
    assert too_long.status_code == 400
    assert "366 days" in too_long.json()["detail"]
    unknown_run = client.get("/price-alerts/api/history?dag_id=price_notification&run_id=nope", headers=headers)
    assert unknown_run.status_code == 404
    assert client.get("/price-alerts/static/index.py", headers=headers).status_code == 404


@pytest.mark.parametrize("api", ["history", "ledger"])
@pytest.mark.parametrize(
    "query", ["end=0001-01-01T00:00Z", "end=9999-12-31T23:59Z", "start=9999-12-31T23:50Z", "start=0001-01-01T00:05Z"]
)
def test_extreme_dates_are_refused_with_the_reason_not_a_500(client, token, api, query):
    """Issue 21, point 9: an uncaught OverflowError answered 500."""
    answer = client.get(f"/price-alerts/api/{api}?{query}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 400
    assert "outside the dates the page shows" in answer.json()["detail"]


def test_the_ui_lists_the_nav_view_and_the_dag_run_view(client, token):
    response = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})

    [plugin] = [p for p in response.json()["plugins"] if p["name"] == "price_alerts"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/price-alerts"]
    views = {view["destination"]: view for view in plugin["external_views"]}
    assert views["nav"]["href"] == "/price-alerts/"
    assert views["dag_run"]["href"] == "/price-alerts/?dag_id={DAG_ID}&run_id={RUN_ID}"
    assert json.dumps(plugin).count("http") == 0  # nothing remote


def test_the_pair_selector_shows_another_pairs_windows_and_refuses_an_unknown_pair(client, token, aws, monkeypatch):
    from include.price_pipeline import ledger, rules, settings
    from tests.records import seed_pairs

    monkeypatch.setenv("PRICE_RULES_FILE", "include/rules/local.json")
    slot = utc(2026, 3, 21, 10, 0)
    for at, price in ((slot - layout.SLOT, 149.0), (slot, 151.0)):
        seed_pairs(aws.s3, aws.config.bucket, at, {"SOL/USDT": price, "BTC/USDT": 90000.0})
    rule_set = rules.load(rules.resolve_path("include/rules/local.json"))
    ledger.analyse_pairs(aws.s3, aws.config, rule_set, slot, False, "backfill run", "u", "r")
    headers = {"Authorization": f"Bearer {token}"}
    window = "start=2026-03-21T10:00Z&end=2026-03-21T10:10Z"

    data = client.get(f"/price-alerts/api/history?{window}&pair=SOL/USDT", headers=headers).json()

    assert data["pair"] == "SOL/USDT"
    assert data["pairs"] == list(settings.load_rules(settings.load()).pairs)
    first, second = data["windows"]
    assert (first["price"], first["decision"], first["direction"]) == (151.0, "suppressed_backfill", "up")
    assert first["reason"] == "cross-150: backfill run"
    assert second["decision"] == "missing"
    default = client.get(f"/price-alerts/api/history?{window}", headers=headers).json()
    assert default["pair"] == "ETH/USDT"
    unknown = client.get(f"/price-alerts/api/history?{window}&pair=DOGE/USDT", headers=headers)
    assert unknown.status_code == 400
    assert "pair must be one of ETH/USDT, BTC/USDT, SOL/USDT" in unknown.text


def test_the_page_data_carries_the_open_incidents_and_the_last_closed(client, token, aws):
    """Issue 38: what ops were paged of, as the page shows it: open incidents, oldest first, then closed ones."""
    from datetime import timedelta

    from include.price_pipeline import incidents

    feed = incidents.Failure(incidents.FEED_PROBLEM, "binance", "price_exchange_feed.fetch_exchange_candles", "x")
    late = incidents.Failure(incidents.PAIR_LATE, "BTC/USDT", "", "- BTC/USDT: no record")
    for index, seen in enumerate([
        incidents.Observation(SLOT, failures=(feed,)),
        incidents.Observation(SLOT + layout.SLOT, failures=(feed, late)),
        incidents.Observation(SLOT + layout.SLOT * 2, healthy_task=feed.healer),
    ]):  # fmt: skip
        incidents.observe(aws.s3, aws.config.bucket, aws.config.changes_prefix, seen, timedelta(hours=1),
                          lambda *_: None, now=index)  # fmt: skip
    client.cookies.set("_token", token)
    try:
        shown = client.get(f"/price-alerts/api/history?{RANGE}").json()["incidents"]
    finally:
        client.cookies.clear()

    assert shown == {
        "open": [{"kind": "Pair late", "subject": "BTC/USDT", "first": "2026-03-20T10:05:00Z",
                  "last": "2026-03-20T10:05:00Z", "windows": 1, "resolved": None}],
        "closed": [{"kind": "Feed problem", "subject": "binance", "first": "2026-03-20T10:00:00Z",
                    "last": "2026-03-20T10:05:00Z", "windows": 2, "resolved": "2026-03-20T10:10:00Z"}],
    }  # fmt: skip
