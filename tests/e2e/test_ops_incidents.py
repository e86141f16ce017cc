"""Issue 38 end to end: the exchange stand-in down for 12 windows, then up, under ``dag.test()`` runs of
price_exchange_feed and price_notification (ccxt against the stand-in, the Glue runner, moto's SNS), each run
at its window's own time (the DAGs' clock, ``operators._now``, set to a second after the window ended: a live
window, whose sensor waits the 6 s sensor timeout of the test settings for a record that never comes). Each
outage is one incident: the feed's *Feed problem* of binance and the pipeline's *Feed stale*, each opened once,
reminded as PRICE_OPS_REPEAT_MINUTES (30) asks, resolved once by the first window the exchange answers; the
alerts are those an independent computation over the served candles says, once each."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from include.price_pipeline import layout, operators
from local.exchange import MAX_FAULTS
from tests.conftest import utc
from tests.e2e.test_exchange_feed import alerted, changes, threshold
from tests.e2e.test_price_notification import DEFAULT_PARAMS, parse_dag_with

pytestmark = pytest.mark.e2e

W0 = utc(2026, 6, 5, 10, 0)  # a day no other test uses
BEFORE = [W0 + layout.SLOT * index for index in (-2, -1)]
DOWN = [W0 + layout.SLOT * index for index in range(12)]
AFTER = [W0 + layout.SLOT * index for index in range(12, 16)]
PAIRS = ("ETH/USDT", "BTC/USDT")


@pytest.fixture(scope="module")
def dags(airflow_db, exchange_standin, tmp_path_factory):
    rule = {"name": "move-5m", "kind": "change", "minutes": 5, "tolerance_minutes": 55}
    moves = {pair: changes(exchange_standin, pair, BEFORE + DOWN + AFTER) for pair in PAIRS}
    thresholds = {pair: threshold(moves[pair]) for pair in PAIRS}
    document = {"default_pair": "ETH/USDT", "pairs": {p: [{**rule, "threshold_pct": thresholds[p]}] for p in PAIRS}}
    rules_file = tmp_path_factory.mktemp("rules") / "incidents.json"
    rules_file.write_text(json.dumps(document))
    # A poking sensor: a deferred one's trigger runs inline in dag.test(), its timeout ignored.
    env = {"PRICE_RULES_FILE": str(rules_file), "PRICE_EXCHANGE_URL": exchange_standin.url,
           "PRICE_OPS_REPEAT_MINUTES": "30", "PRICE_DEFERRABLE": "false"}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        feed = parse_dag_with(patch, "feed_incidents", "price_exchange_feed", **env)
        notification = parse_dag_with(patch, "notification_incidents", **env)
    feed.get_task("fetch_exchange_candles").retries = 0  # dag.test() would wait out the retries' delays
    notification.get_task("wait_for_price_record").retries = 0
    # Each window's alerts: a move beyond the threshold from the window before (the windows after the outage
    # have none before them within the rule's hour but for the first, whose hour is the outage: no alert).
    expected = {(pair, slot) for pair in PAIRS for slot, move in moves[pair].items()
                if move > thresholds[pair] and slot - layout.SLOT not in DOWN and slot not in DOWN}  # fmt: skip
    return feed, notification, thresholds, expected


def run(feed, notification, thresholds, slot, monkeypatch) -> tuple[str, str]:
    """The window's feed run and pipeline run, a second after the window ended."""
    monkeypatch.setattr(operators, "_now", lambda: slot + layout.SLOT + timedelta(seconds=1))
    fed = feed.test(logical_date=slot + layout.SLOT)
    conf = {**DEFAULT_PARAMS, "threshold_pct": thresholds["ETH/USDT"]}
    decided = notification.test(logical_date=slot + layout.SLOT, run_conf=conf)
    return fed.state, decided.state


def test_an_exchange_down_for_twelve_windows_opens_reminds_and_resolves_each_incident_once(
    dags, aws, exchange, monkeypatch
):
    feed, notification, thresholds, expected = dags
    for slot in BEFORE:
        assert run(feed, notification, thresholds, slot, monkeypatch) == ("success", "success")
    exchange.fault("unavailable", MAX_FAULTS)
    for slot in DOWN:
        assert run(feed, notification, thresholds, slot, monkeypatch) == ("failed", "failed")
    exchange.fault("none", 0)
    for slot in AFTER:
        assert run(feed, notification, thresholds, slot, monkeypatch) == ("success", "success")

    at = f"{W0:%Y-%m-%d %H:%M} UTC"
    subjects = [message["Subject"] for message in aws.ops()]
    assert sorted(subjects) == sorted([
        f"[price pipeline] Feed problem: binance {at}",
        f"[price pipeline] Feed stale: wait_for_price_record {at}",
        "[price pipeline] Still feed problem: binance",  # window 6: 30 min after the page
        "[price pipeline] Still feed stale: wait_for_price_record",
        "[price pipeline] Resolved, feed problem: binance after 1 h 0 min, 12 windows",
        "[price pipeline] Resolved, feed stale: wait_for_price_record after 1 h 0 min, 12 windows",
    ])  # fmt: skip
    got = alerted(aws.alerts())
    assert sorted(got) == sorted(expected)  # each once, none lost
    assert len(expected) >= 1
