"""Issue 36: the exchange's answers under the input contract, against the exchange stand-in misbehaving
(local/exchange.py's damaged klines and slow answers) and the AWS stand-in's S3. Two different candles of
one window give no record; one bad candle costs its own window, reported in one line with its value; a slow
exchange costs its own pairs only."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.price_pipeline import exchange as feed
from include.price_pipeline import layout, rules, runs, store
from include.price_pipeline.alerts import quoted
from tests.conftest import ExchangeStandin, utc
from tests.integration.test_exchange_feed import RULES, fetch

pytestmark = pytest.mark.integration

HOUR = utc(2026, 5, 20, 7, 0)  # days no other test writes: one hour of each case
BAD = HOUR + timedelta(minutes=40)  # the damaged window
AT = int(BAD.timestamp() * 1000)
SLOT_MS = feed.SLOT_MS


def as_ccxt(kline: list) -> list:
    """A kline as ccxt's raw method gives it to the feed: every number as text."""
    return [str(value) if isinstance(value, int) else value for value in kline]


def stamp(slot: datetime) -> str:
    return f"{slot:%Y-%m-%d %H:%M} UTC"


def eth_keys(aws, start: datetime, end: datetime) -> list[datetime]:
    """The windows of ``[start, end)`` with an ETH/USDT record, read by the one lister."""
    present = store.records_present(aws.s3, aws.config.bucket, aws.config.ingestion_prefix,
                                         layout.slots_between(start, end), "ETH/USDT")  # fmt: skip
    return sorted(slot for slot, pair in present if pair == "ETH/USDT")


def test_two_different_candles_of_one_window_give_it_no_record_and_name_both(aws, exchange):
    start = HOUR
    bad = start + timedelta(minutes=40)
    served = exchange.klines("ETH/USDT", bad, bad + layout.SLOT)[0]
    higher = f"{float(served[4]) * 1.1:.8f}"
    exchange.damage({"pair": "ETH/USDT", "at": served[0], "values": {"4": higher}, "twin": True})
    [first, second] = map(as_ccxt, exchange.klines("ETH/USDT", bad, bad + layout.SLOT))

    done, _ = fetch(aws, exchange.url, start, start + timedelta(hours=1))

    assert done["ETH/USDT"].refused == [
        f"binance ETH/USDT {stamp(bad)}: 2 different candles, {quoted(first)} and {quoted(second)}"
    ]
    assert eth_keys(aws, start, start + timedelta(hours=1)) == [
        s for s in layout.slots_between(start, start + timedelta(hours=1)) if s != bad
    ]
    assert (len(done["ETH/USDT"].written), len(done["BTC/USDT"].written)) == (11, 12)
    assert runs._fetched(done, "a range", missing_is_a_problem=False)["ETH/USDT"]["refused"] == 1  # goes on


def test_identical_copies_of_a_candle_are_one(aws, exchange):
    start = HOUR + timedelta(days=1)
    exchange.damage({"pair": "ETH/USDT", "at": int(start.timestamp() * 1000), "values": {}, "twin": True})
    assert len(exchange.klines("ETH/USDT", start, start + layout.SLOT)) == 2

    done, _ = fetch(aws, exchange.url, start, start + timedelta(hours=1))

    assert (len(done["ETH/USDT"].written), done["ETH/USDT"].refused) == (12, [])


DAMAGES = {
    "off-grid-open-time": ({"0": AT + 60_000}, None, "candle opens off the window's start"),
    "negative-volume": ({"5": "-1.5"}, None, "/ quote_volume -1.5 cannot derive one"),
    "nan-price": ({"4": "NaN"}, None, "close is not finite: 'NaN'"),
    "overflowing-price": ({"2": "1e309"}, None, "high is not finite: '1e309'"),
    "seven-fields": ({}, 7, "kline has 7 values; a Binance kline has at least 8"),
    "close-time-not-one-candle": ({"6": AT + 2 * SLOT_MS - 1}, None, "do not span one 5-minute candle"),
    "fullwidth-digits": ({"1": "\uff13\uff10\uff10\uff10"}, None, "open is not a number: '\\uff13"),
    "underscore-digits": ({"1": "3_000.5"}, None, "open is not a number: '3_000.5'"),
    "empty-volume": ({"5": ""}, None, "no weighted_average, and no volume and quote_volume to derive it"),
    "blank-value": ({"3": "  "}, None, "low is not a number: ''"),
}


@pytest.mark.parametrize(("values", "width", "rule"), DAMAGES.values(), ids=DAMAGES.keys())
def test_one_bad_candle_costs_its_own_window_only_reported_with_its_value(aws, exchange, values, width, rule):
    start = HOUR.replace(day=22, hour=list(DAMAGES.values()).index((values, width, rule)))
    bad, at = start + timedelta(minutes=40), int((start + timedelta(minutes=40)).timestamp() * 1000)
    values = {index: at + (value - AT) if isinstance(value, int) else value for index, value in values.items()}
    exchange.damage({"pair": "ETH/USDT", "at": at, "values": values, **({"width": width} if width else {})})
    [damaged] = [
        as_ccxt(k) for k in exchange.klines("ETH/USDT", start, start + timedelta(hours=1)) if k[0] in (at, at + 60_000)
    ]

    done, _ = fetch(aws, exchange.url, start, start + timedelta(hours=1))

    [line] = done["ETH/USDT"].refused
    assert line.startswith(f"binance ETH/USDT {stamp(bad)}: ")  # the pair and the window
    assert rule in line  # the rule, with the value as the Glue job reads it
    assert line.endswith(quoted(damaged))  # the candle, every value showing
    assert line.isascii()
    assert line.isprintable()
    assert done["ETH/USDT"].problems == []
    slots = layout.slots_between(start, start + timedelta(hours=1))
    assert eth_keys(aws, start, start + timedelta(hours=1)) == [slot for slot in slots if slot != bad]
    assert len(done["BTC/USDT"].written) == 12
    assert runs._fetched(done, "a range", missing_is_a_problem=False)["ETH/USDT"]["refusals"] == [line]


def test_a_candle_whose_open_time_is_not_a_number_is_reported_and_its_window_listed_not_served(aws, exchange):
    start = HOUR.replace(day=29)
    bad = start + timedelta(minutes=40)
    exchange.damage({"pair": "ETH/USDT", "at": int(bad.timestamp() * 1000), "values": {"0": "\u00b2"}})

    done, _ = fetch(aws, exchange.url, start, start + timedelta(hours=1))

    [line] = done["ETH/USDT"].refused
    assert line.startswith("binance ETH/USDT: a candle without an open time in ms: \"['\\u00b2', ")
    assert done["ETH/USDT"].not_served == [layout.slot_stamp(bad)]
    assert (len(done["ETH/USDT"].written), len(done["BTC/USDT"].written)) == (11, 12)
    assert runs._fetched(done, "a range", False)["ETH/USDT"]["windows_not_served"] == [layout.slot_stamp(bad)]


def test_the_live_feed_refuses_its_one_window_the_same_and_writes_the_other_pairs(aws, exchange):
    slot = HOUR.replace(day=30)
    exchange.damage({"pair": "ETH/USDT", "at": int(slot.timestamp() * 1000), "values": {"4": "NaN"}})

    done, _ = fetch(aws, exchange.url, slot)

    assert (done["ETH/USDT"].written, len(done["BTC/USDT"].written)) == ([], 1)
    with pytest.raises(AirflowFailException) as failed:
        runs._fetched(done, f"window {stamp(slot)}", missing_is_a_problem=True)
    assert str(failed.value).startswith(
        f"Feed problem, window {stamp(slot)}: binance ETH/USDT {stamp(slot)}: \"close is not finite: 'NaN'\" in candle"
    )


def test_windows_not_served_are_named_then_counted():
    fetched = feed.Fetched("binance", not_served=[f"2026052{n // 10}T{n % 10:02d}00Z" for n in range(25)])
    named = fetched.summary()["windows_not_served"]
    assert (fetched.summary()["not_served"], len(named), named[-1]) == (25, feed.NAMED + 1, "and 5 more")


def test_a_producer_key_with_a_stamp_in_its_name_is_read_as_its_windows_record(aws, exchange):
    """Issue 36: ``<0735>/BTC_USDT-20261207T0740Z.json`` is BTC's record of 07:35 (the key grammar, as the sensor
    and the Glue job read it), not of 07:40: the feed fetches 07:40 and writes nothing at 07:35."""
    first = HOUR.replace(day=31, minute=35)
    theirs = layout.ingestion_window_prefix(first, aws.config.ingestion_prefix) + (
        f"/BTC_USDT-{layout.slot_stamp(first + layout.SLOT)}.json"
    )
    aws.put(theirs, b"{}")

    done, _ = fetch(aws, exchange.url, first, first + 2 * layout.SLOT)
    live, _ = fetch(aws, exchange.url, first)

    second = layout.ingestion_key(first + layout.SLOT, ".json", aws.config.ingestion_prefix, pair="BTC/USDT")
    assert (done["BTC/USDT"].written, done["BTC/USDT"].present) == ([second], 1)
    assert (live["BTC/USDT"].written, live["BTC/USDT"].present) == ([], 1)
    assert aws.keys(layout.ingestion_window_prefix(first, aws.config.ingestion_prefix) + "/BTC") == [theirs]


@pytest.fixture
def slow_exchange():
    standin = ExchangeStandin()
    yield standin
    standin.server.shutdown()


def test_a_slow_exchange_costs_its_own_pairs_that_window_never_another_exchanges(aws, exchange, slow_exchange,
                                                                                  monkeypatch):  # fmt: skip
    """An answer of a byte every 0.5 s never meets ccxt's per-read timeout: the request's deadline ends it."""
    slot = utc(2026, 5, 19, 9, 0)
    monkeypatch.setattr(feed, "WORKERS_PER_EXCHANGE", 1)  # one worker: SOL/USDT is not begun once BTC/USDT failed
    slow_exchange.fault("slow", 10, seconds=0.5)
    document = {**RULES, "pairs": {**RULES["pairs"], "SOL/USDT": RULES["pairs"]["ETH/USDT"]}}
    rule_set = rules.parse({**document, "feed": {"exchange": "binance", "pairs": {
        "BTC/USDT": {"exchange": "binanceus"}, "SOL/USDT": {"exchange": "binanceus"}}}}, "test")  # fmt: skip

    def connect_to(exchange_id: str, url: str):
        return feed.connect(exchange_id, slow_exchange.url if exchange_id == "binanceus" else url)

    started = time.monotonic()
    done = feed.write_candles(aws.s3, replace(aws.config, exchange_url=exchange.url), rule_set, slot,
                              slot + layout.SLOT, datetime.now(UTC), connect_to, lambda _: None, 1.5)  # fmt: skip
    seconds = time.monotonic() - started

    assert seconds < 5, seconds
    assert len(done["ETH/USDT"].written) == 1
    assert done["BTC/USDT"].problems == ["binanceus BTC/USDT: no whole answer within 1.5 s; not asked again now"]
    assert done["SOL/USDT"].problems == ["binanceus SOL/USDT: not asked, as for BTC/USDT"]
    assert done["BTC/USDT"].passing
    assert done["SOL/USDT"].passing
    assert [
        key.rsplit("/", 1)[-1] for key in aws.keys(layout.ingestion_window_prefix(slot, aws.config.ingestion_prefix))
    ] == ["ETH_USDT.json"]
