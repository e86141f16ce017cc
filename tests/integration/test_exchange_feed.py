"""The exchange feed (include/price_pipeline/exchange.py) against two real servers on loopback: the
exchange stand-in (Binance's API through ccxt, real candles) and the AWS stand-in's S3.

Each failure (exchange down, rate-limited, malformed answer, a candle still open) gives one line naming
the exchange and the pair, and writes nothing; a closed candle is written once, as the exchange's own
kline; history comes in pages."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from include.price_pipeline import exchange as feed
from include.price_pipeline import layout, rules
from local.stack import free_port
from tests.conftest import utc

pytestmark = pytest.mark.integration

DAY = utc(2026, 5, 11)  # a day no other test writes
RULES = {
    "default_pair": "ETH/USDT",
    "pairs": {
        "ETH/USDT": [
            {"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "minutes": 5, "tolerance_minutes": 55}
        ],
        "BTC/USDT": [
            {"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "minutes": 5, "tolerance_minutes": 55}
        ],
    },
}


def fetch(aws, url: str, start: datetime, end: datetime | None = None, now: datetime | None = None,
          document: dict = RULES, s3=None, **sources):  # fmt: skip
    """``exchange.write_candles`` as the tasks call it, with ``document``'s rules (``sources``: its feed);
    sleeps recorded, not slept."""
    slept: list[float] = []
    rule_set = rules.parse({**document, **({"feed": sources} if sources else {})}, "test")
    done = feed.write_candles(
        s3 or aws.s3, replace(aws.config, exchange_url=url), rule_set, start, end or start + layout.SLOT,
        now or datetime.now(UTC), sleep=slept.append,
    )  # fmt: skip
    return done, slept


def raw_keys(aws, slot: datetime) -> list[str]:
    return aws.keys(layout.ingestion_window_prefix(slot, aws.config.ingestion_prefix))


def test_a_closed_candle_is_written_once_as_the_exchanges_own_kline(aws, exchange):
    slot = DAY.replace(hour=1)
    done, _ = fetch(aws, exchange.url, slot)

    default_key = layout.ingestion_key(slot, ".json", aws.config.ingestion_prefix, pair="ETH/USDT")
    other_key = layout.ingestion_key(slot, ".json", aws.config.ingestion_prefix, pair="BTC/USDT")
    assert done["ETH/USDT"].written == [default_key]
    assert done["BTC/USDT"].written == [other_key]
    [served] = exchange.klines("ETH/USDT", slot, slot + layout.SLOT)
    assert json.loads(aws.get(default_key)) == [served]  # Binance's kline as Binance sends it
    assert aws.s3.head_object(Bucket=aws.config.bucket, Key=default_key)["ContentType"] == "application/json"

    again, _ = fetch(aws, exchange.url, slot)
    assert [(f.written, f.present, f.problems) for f in again.values()] == [([], 1, [])] * 2
    assert sorted(raw_keys(aws, slot)) == sorted([default_key, other_key])


def test_a_window_another_producer_wrote_is_not_fetched(aws, exchange):
    slot = DAY.replace(hour=2)
    theirs = layout.ingestion_key(slot, ".csv", aws.config.ingestion_prefix, pair="ETH/USDT")
    aws.put(theirs, "date,close\n1,2\n")
    before = exchange.requests()

    done, _ = fetch(aws, exchange.url, slot)

    assert (done["ETH/USDT"].written, done["ETH/USDT"].present) == ([], 1)
    assert len(done["BTC/USDT"].written) == 1
    assert exchange.requests() - before == 1  # BTC/USDT's only
    assert aws.get(theirs) == b"date,close\n1,2\n"


def test_a_key_written_between_the_listing_and_the_write_is_left_as_it_is(aws, exchange, monkeypatch):
    """The write itself is conditional (If-None-Match), not the listing before it."""
    slot = DAY.replace(hour=3)
    key = layout.ingestion_key(slot, ".json", aws.config.ingestion_prefix, pair="ETH/USDT")
    monkeypatch.setattr(feed.store, "records_present", lambda *args: set())
    aws.put(key, b'{"someone": "else"}')

    done, _ = fetch(aws, exchange.url, slot)

    assert done["ETH/USDT"].written == []
    assert done["ETH/USDT"].present == 1
    assert aws.get(key) == b'{"someone": "else"}'


@pytest.fixture
def one_worker(monkeypatch):
    """One worker per exchange: its pairs are asked in turn, so what one pair's tries did is what they show,
    and the pairs after one that found the exchange unreachable are not begun (several workers each finish
    the pair they began)."""
    monkeypatch.setattr(feed, "WORKERS_PER_EXCHANGE", 1)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("rate_limit", 'binance ETH/USDT: rate-limited (DDoSProtection: "binance 429 Too Many Requests'),
        ("unavailable", 'binance ETH/USDT: exchange down (ExchangeNotAvailable: "binance GET '),
    ],
)
def test_a_refusing_exchange_is_asked_four_times_with_backoff_then_is_a_one_line_problem(aws, exchange, mode, reason,
                                                                                         one_worker):  # fmt: skip
    slot = DAY.replace(hour=4)
    exchange.fault(mode, 100)

    done, slept = fetch(aws, exchange.url, slot)

    [problem] = done["ETH/USDT"].problems
    assert problem.startswith(reason)
    assert problem.endswith(", 4 tries")
    assert "\n" not in problem
    assert slept == [1.0, 2.0, 4.0]  # BTC/USDT, on the same exchange, is not asked again:
    assert done["BTC/USDT"].problems == ["binance BTC/USDT: not asked, as for ETH/USDT"]
    assert raw_keys(aws, slot) == []


def test_a_rate_limit_asking_for_a_longer_wait_than_the_task_has_is_a_problem_at_once(aws, exchange, one_worker):
    slot = DAY.replace(hour=10)
    exchange.fault("rate_limit_long", 100)

    done, slept = fetch(aws, exchange.url, slot)

    [problem] = done["ETH/USDT"].problems
    assert problem.startswith('binance ETH/USDT: rate-limited (DDoSProtection: "binance 429 Too Many Requests')
    assert problem.endswith("; not asked again now")
    assert slept == []
    assert raw_keys(aws, slot) == []


class RefusingPuts:
    """The stand-in's S3 client, but every PutObject is refused as an old policy without the feed's grant
    would refuse it (moto has no IAM enforcement to do it)."""

    def __init__(self, s3):
        self.s3 = s3

    def __getattr__(self, name):
        return getattr(self.s3, name)

    def put_object(self, **kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")


def test_s3_refusing_a_write_is_a_one_line_problem(aws, exchange):
    slot = DAY.replace(hour=11)

    done, _ = fetch(aws, exchange.url, slot, s3=RefusingPuts(aws.s3))

    assert done["ETH/USDT"].problems == [
        'binance ETH/USDT: S3 refused a write ("An error occurred (AccessDenied) when calling the PutObject '
        'operation: Access Denied")'
    ]
    assert done["ETH/USDT"].passing
    assert raw_keys(aws, slot) == []


def test_a_rate_limit_that_passes_is_waited_out(aws, exchange, one_worker):
    slot = DAY.replace(hour=5)
    exchange.fault("rate_limit", 2)

    done, slept = fetch(aws, exchange.url, slot)

    assert slept == [1.0, 2.0]
    assert [len(f.written) for f in done.values()] == [1, 1]
    assert not any(f.problems for f in done.values())


def test_an_exchange_that_is_down_is_a_one_line_problem(aws, one_worker):
    slot = DAY.replace(hour=6)
    nobody = f"http://127.0.0.1:{free_port()}/api/v3"

    done, slept = fetch(aws, nobody, slot)

    [problem] = done["ETH/USDT"].problems
    assert problem.startswith('binance ETH/USDT: exchange down (NetworkError: "binance GET http://127.0.0.1:')
    assert problem.endswith('"; [Errno 111] Connection refused), 4 tries')
    assert "\n" not in problem
    assert slept == [1.0, 2.0, 4.0]
    assert raw_keys(aws, slot) == []


def test_an_answer_that_is_no_list_of_candles_is_a_one_line_problem_and_writes_nothing(aws, exchange, one_worker):
    slot = DAY.replace(hour=7)
    exchange.fault("html", 1)  # ETH/USDT's answer only

    done, slept = fetch(aws, exchange.url, slot)

    [problem] = done["ETH/USDT"].problems
    assert problem.startswith('binance ETH/USDT: malformed answer (not a list of candles): "\\u003chtml\\u003e')
    assert "\n" not in problem
    assert slept == []  # an answer is not tried again
    assert [key.rsplit("/", 2)[-2:] for key in raw_keys(aws, slot)] == [[layout.slot_stamp(slot), "BTC_USDT.json"]]


def test_a_candle_missing_values_is_its_windows_one_line_refusal(aws, exchange, one_worker):
    slot = DAY.replace(hour=7, minute=5)
    exchange.fault("malformed", 1)  # ETH/USDT's answer only

    done, slept = fetch(aws, exchange.url, slot)

    [refused] = done["ETH/USDT"].refused
    assert refused.startswith(f'binance ETH/USDT {slot:%Y-%m-%d %H:%M} UTC: "kline has 5 values; a Binance kline ')
    assert (done["ETH/USDT"].problems, done["ETH/USDT"].written, slept) == ([], [], [])
    assert [key.rsplit("/", 2)[-2:] for key in raw_keys(aws, slot)] == [[layout.slot_stamp(slot), "BTC_USDT.json"]]


def test_a_candle_still_open_is_never_written(aws, exchange):
    now = datetime.now(UTC)
    current = layout.slot_start(now)  # the candle the exchange is still building

    done, _ = fetch(aws, exchange.url, current, now=now)

    assert exchange.klines("ETH/USDT", current, current + layout.SLOT), "the exchange serves the open candle"
    closes = current + layout.SLOT
    assert done["ETH/USDT"].refused == [
        f"binance ETH/USDT {current:%Y-%m-%d %H:%M} UTC: candle is still open (closes {closes:%H:%M:%S} UTC)"
    ]
    assert raw_keys(aws, current) == []


def test_an_unknown_pair_is_the_exchanges_refusal_not_retried(aws, exchange):
    slot = DAY.replace(hour=8)
    unknown = {**RULES, "pairs": {**RULES["pairs"], "XYZ/QQQ": RULES["pairs"]["BTC/USDT"]}}

    done, slept = fetch(aws, exchange.url, slot, document=unknown)

    assert slept == []
    assert done["XYZ/QQQ"].problems == [
        'binance XYZ/QQQ: the exchange refused ("binance {\\"code\\": -1121, \\"msg\\": \\"Invalid symbol.\\"}")'
    ]
    assert len(done["ETH/USDT"].written) == 1


def test_a_day_of_history_is_one_page_per_pair_and_only_the_missing_windows(aws, exchange):
    day = DAY + timedelta(days=1)
    skipped = day + timedelta(hours=5)
    aws.put(layout.ingestion_key(skipped, ".xml", aws.config.ingestion_prefix, pair="ETH/USDT"), b"<record/>")
    before = exchange.requests()

    done, _ = fetch(aws, exchange.url, day, day + timedelta(days=1))

    assert exchange.requests() - before == 2
    assert (len(done["ETH/USDT"].written), done["ETH/USDT"].present) == (287, 1)
    assert (len(done["BTC/USDT"].written), done["BTC/USDT"].present) == (288, 0)
    keys = aws.keys(aws.config.ingestion_prefix + layout.partition(day))
    assert len(keys) == 288 * 2


def test_a_month_of_history_comes_in_pages_of_a_thousand(aws, exchange):
    start = utc(2026, 2, 1)
    before = exchange.requests()
    one_pair = {**RULES, "pairs": {"ETH/USDT": RULES["pairs"]["ETH/USDT"]}}

    done, _ = fetch(aws, exchange.url, start, start + timedelta(days=28), document=one_pair)

    assert exchange.requests() - before == 9  # 8064 candles
    assert len(done["ETH/USDT"].written) == 28 * 288


def test_an_exchange_without_quote_volume_writes_a_typical_price_record(aws, exchange):
    """A pair opted into typical_price takes ccxt's unified candles (fetch_ohlcv, after loading the markets)."""
    slot = DAY.replace(hour=9)
    done, _ = fetch(aws, exchange.url, slot, pairs={"BTC/USDT": {"weighted_average": "typical_price"}})

    [key] = done["BTC/USDT"].written
    [kline] = exchange.klines("BTC/USDT", slot, slot + layout.SLOT)
    assert json.loads(aws.get(key)) == {
        "date": int(slot.timestamp()),
        **{name: float(kline[index]) for index, name in enumerate(("open", "high", "low", "close"), start=1)},
        "quoteVolume": float(kline[5]),
        "weightedAverageBasis": "typical_price",
    }


def test_an_exchanges_pairs_are_asked_by_several_workers_at_once_and_all_written(aws, exchange):
    """A far exchange (each answer 0.2 s later): 40 pairs asked one after another took 8 s; the workers of
    one exchange ask them side by side, within its one limiter."""
    slot = DAY.replace(hour=20)
    exchange.fault("delayed", 1000, seconds=0.2)
    many = {f"P{index:03d}/USDT": [{"name": "move", "kind": "change", "threshold_pct": 1.0}] for index in range(40)}
    rule_set = rules.parse({"default_pair": "P000/USDT", "pairs": many}, "test")

    done = feed.write_candles(aws.s3, replace(aws.config, exchange_url=exchange.url), rule_set, slot,
                              slot + layout.SLOT, slot + timedelta(minutes=6), sleep=lambda _: None)  # fmt: skip

    assert {pair: (len(fetched.written), fetched.problems) for pair, fetched in done.items()} == {
        pair: (1, []) for pair in many
    }
    assert 2 <= exchange.most_at_once() <= feed.WORKERS_PER_EXCHANGE
