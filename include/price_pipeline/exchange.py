"""The exchange feed: each pair's closed 5-minute candles from its exchange, through ccxt, written to the
pair's ingestion key exactly as an outside producer would write them.

What is written, when, how often and from which exchange (the rules file's ``feed``, ``rules.Source``) is
README's "Exchange feed". A candle is closed by the wall clock ``now``: whether it closed is a fact of the
exchange's time, not of the run's. Plain functions, no Airflow: the DAGs' tasks (``runs``) and ``make
backfill`` call them; ccxt is imported where an exchange is made, never when a DAG is parsed.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from include.price_pipeline import layout, store
from include.price_pipeline.alerts import quoted
from include.price_pipeline.rules import QUOTE_VOLUME_EXCHANGES

SLOT_MS = layout.SLOT_SECONDS * 1000
#: Most candles one request asks for (Binance's klines limit; ccxt passes it on for other exchanges).
PAGE = 1000
TRIES = 4
BACKOFF_SECONDS = 1.0
TIMEOUT_MS = 10_000
#: A rate limit's Retry-After longer than this is not waited out within the task: the pair is a problem.
MAX_RETRY_AFTER_SECONDS = 30
RECORD_SUFFIX = ".json"


class FeedProblem(Exception):
    """A pair's candles could not be had or cannot be trusted; the message is one line naming the exchange
    and the pair, and nothing was written for them. ``unreachable``: the exchange itself did not answer or
    refused for its rate limit, after every try (its other pairs are not asked again in this fetch)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class Fetched:
    """What one fetch did for a pair: keys written, windows that already had a record, windows the exchange
    served no candle for, problems (one line each)."""

    exchange: str
    written: list[str] = field(default_factory=list)
    present: int = 0
    not_served: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    passing: bool = False  # a problem another try may not have: the exchange unreachable, S3 refusing

    def summary(self) -> dict:
        return {
            "written": len(self.written),
            "present": self.present,
            "not_served": len(self.not_served),
            "problems": self.problems,
        }


def connect(exchange_id: str, url: str = "", timeout_ms: int = TIMEOUT_MS):
    """A ccxt exchange with its rate limiter on; ``url`` (``PRICE_EXCHANGE_URL``) replaces the public API's
    base URL of a Binance-API exchange (``rules.QUOTE_VOLUME_EXCHANGES``: the exchange stand-in, a proxy);
    any other exchange keeps its own. No API key: public candles need none."""
    import ccxt

    make = getattr(ccxt, exchange_id, None)
    if not isinstance(make, type) or not issubclass(make, ccxt.Exchange):
        raise FeedProblem(f"{exchange_id}: not an exchange ccxt {ccxt.__version__} knows")
    exchange = make({"enableRateLimit": True, "timeout": timeout_ms, "options": {"fetchMarkets": ["spot"]}})
    if url and exchange_id in QUOTE_VOLUME_EXCHANGES:
        api = exchange.urls["api"]
        exchange.urls["api"] = {**api, "public": url} if isinstance(api, dict) else url
    return exchange


def candles(exchange, source, pair: str, start: datetime, end: datetime, sleep=time.sleep) -> list[list]:
    """The pair's candles opening in ``[start, end)``, in order, page by page: raw klines for an exchange
    with quote volume, else ccxt's unified ``[ms, open, high, low, close, volume]``."""
    start_ms, end_ms = _ms(start), _ms(end)
    found: list[list] = []
    for since in range(start_ms, end_ms, PAGE * SLOT_MS):  # each page asks for its own span: none is skipped
        until = min(end_ms, since + PAGE * SLOT_MS)
        page = _call(
            lambda since=since, until=until: _page(exchange, source, pair, since, until), exchange, pair, sleep
        )
        if not isinstance(page, list) or not all(isinstance(candle, list) and candle for candle in page):
            raise FeedProblem(f"{exchange.id} {pair}: malformed answer (not a list of candles): {quoted(page)}")
        found += [candle for candle in page if since <= _open_ms(candle, exchange.id, pair) < until]
    return found


def closed_range(start: datetime, end: datetime, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` on window starts and cut at the window still open at ``now``: the history a fetch may
    ask for (a single live window is asked as it is, so that a candle still open is said so)."""
    return layout.slot_start(start), min(end, layout.slot_start(now))


def _page(exchange, source, pair: str, since: int, until: int) -> list:
    if source.weighted_average == "volumes":
        query = {"symbol": pair.replace("/", ""), "interval": "5m", "startTime": since, "endTime": until - 1}
        return exchange.publicGetKlines({**query, "limit": PAGE})
    return exchange.fetch_ohlcv(pair, "5m", since, PAGE, {"until": until - 1})


def record(source, candle: list, slot: datetime, now: datetime) -> bytes:
    """The bytes written for one candle of ``slot``, checked: closed by ``now``, on its slot, every value a
    finite non-negative number (FeedProblem otherwise, without the exchange and pair: the caller adds them)."""
    opened = _ms(slot)
    if opened + SLOT_MS > _ms(now):
        closes = datetime.fromtimestamp((opened + SLOT_MS) / 1000, UTC)
        raise FeedProblem(f"candle {slot:%Y-%m-%d %H:%M} UTC is still open (closes {closes:%H:%M:%S} UTC)")
    volumes = source.weighted_average == "volumes"
    width = 8 if volumes else 6
    if len(candle) < width:
        raise FeedProblem(f"malformed answer: candle has {len(candle)} values, not {width}: {quoted(candle)}")
    values = [_number(value, candle) for value in candle[1:6]]
    if volumes:
        _number(candle[7], candle)
        times = [_integer(candle[0]), _integer(candle[6]), _integer(candle[8]) if len(candle) > 8 else 0]
        if times[:2] != [opened, opened + SLOT_MS - 1] or times[2] is None:
            raise FeedProblem(f"malformed answer: candle {quoted(candle)} does not span one 5-minute candle")
        # Binance's own kline: times and trade count as numbers, prices and volumes as text (ccxt's raw
        # methods give everything as text).
        kline = [times[0], *candle[1:6], times[1], candle[7], *([times[2], *candle[9:]] if len(candle) > 8 else [])]
        return json.dumps([kline]).encode()
    open_, high, low, close, volume = values
    unified = {"date": opened // 1000, "open": open_, "high": high, "low": low, "close": close, "quoteVolume": volume}
    return json.dumps({**unified, "weightedAverageBasis": "typical_price"}).encode()


def write_candles(s3, config, rule_set, start: datetime, end: datetime, now: datetime,
                  connect_to: Callable = connect, sleep=time.sleep) -> dict[str, Fetched]:  # fmt: skip
    """Fetch and write every configured pair's closed candles of ``[start, end)`` that have no record yet
    (one window: the live feed; a range: history, paged). Returns each pair's :class:`Fetched`; a pair's
    problem is in its ``problems`` (one line), with nothing written for the windows it covers."""
    slots = layout.slots_between(start, end)
    present = store.records_present(s3, config.bucket, config.ingestion_prefix, slots, rule_set.default_pair)
    exchanges: dict[str, object] = {}
    unreachable: dict[str, str] = {}  # exchange -> the pair whose tries found it so
    done: dict[str, Fetched] = {}
    for pair, source in rule_set.feed.items():
        fetched = done[pair] = Fetched(source.exchange)
        wanted = [slot for slot in slots if (slot, pair) not in present]
        fetched.present = len(slots) - len(wanted)
        if not wanted:
            continue
        if source.exchange in unreachable:
            fetched.problems.append(f"{source.exchange} {pair}: not asked, as for {unreachable[source.exchange]}")
            fetched.passing = True
            continue
        try:
            if source.exchange not in exchanges:
                exchanges[source.exchange] = connect_to(source.exchange, config.exchange_url)
            exchange = exchanges[source.exchange]
            found = candles(exchange, source, pair, wanted[0], wanted[-1] + layout.SLOT, sleep)
            served = {_open_ms(candle, source.exchange, pair): candle for candle in found}
            bodies = {}
            for slot in wanted:
                candle = served.get(_ms(slot))
                if candle is None:
                    fetched.not_served.append(layout.slot_stamp(slot))
                    continue
                try:
                    bodies[slot] = record(source, candle, slot, now)
                except FeedProblem as problem:
                    raise FeedProblem(f"{source.exchange} {pair}: {problem}") from None
        except FeedProblem as problem:
            fetched.problems.append(str(problem))
            if problem.unreachable:
                unreachable[source.exchange] = pair
                fetched.passing = True
            continue
        try:
            fetched.written = [key for key in _write(s3, config, pair, bodies) if key]
        except ClientError as error:  # the writes that landed are there; the next fetch skips them
            fetched.problems.append(f"{source.exchange} {pair}: S3 refused a write ({quoted(error)})")
            fetched.passing = True
            continue
        fetched.present += len(bodies) - len(fetched.written)
    return done


def _write(s3, config, pair: str, bodies: dict[datetime, bytes]) -> list[str | None]:
    """Write each body once (If-None-Match: a key already there is left as it is: None for it)."""

    def put(item: tuple[datetime, bytes]) -> str | None:
        slot, body = item
        key = layout.ingestion_key(slot, RECORD_SUFFIX, config.ingestion_prefix, pair=pair)
        try:
            store.write_if(s3, config.bucket, key, body, "application/json", None)
        except store.ConditionFailed:
            return None
        return key

    return store.in_parallel(s3, put, list(bodies.items())) if bodies else []


def _call(request: Callable, exchange, pair: str, sleep, tries: int = TRIES):
    """``request()``, tried again after 1, 2, 4 s (``BACKOFF_SECONDS`` doubling, or the ``Retry-After`` the
    exchange asked for, up to MAX_RETRY_AFTER_SECONDS) when the exchange refuses for its rate limit or does
    not answer; an exchange's error answer is not tried again, nor a ban (HTTP 418) or a longer wait asked."""
    import ccxt

    for attempt in range(1, tries + 1):
        wait = BACKOFF_SECONDS * 2 ** (attempt - 1)
        try:
            return request()
        except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as error:  # 429 (Binance: DDoSProtection), 418
            what = f"rate-limited ({_reason(error)})"
            asked = _retry_after(exchange)
            if " 418 " in str(error) or (asked or 0) > MAX_RETRY_AFTER_SECONDS:
                raise FeedProblem(f"{exchange.id} {pair}: {what}; not asked again now", unreachable=True) from None
            wait = max(wait, asked or 0)
        except ccxt.NetworkError as error:  # not reached, timed out, 5xx
            what = f"exchange down ({_reason(error)})"
        except ccxt.BadResponse as error:
            raise FeedProblem(f"{exchange.id} {pair}: malformed answer ({quoted(error)})") from None
        except ccxt.BaseError as error:
            raise FeedProblem(f"{exchange.id} {pair}: the exchange refused ({quoted(error)})") from None
        if attempt < tries:
            sleep(wait)
    raise FeedProblem(f"{exchange.id} {pair}: {what}, {tries} tries", unreachable=True)


def _retry_after(exchange) -> float | None:
    """The seconds a refusal's ``Retry-After`` header asks for (ccxt keeps the last answer's headers)."""
    headers = getattr(exchange, "last_response_headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _reason(error: Exception) -> str:
    """``Class: message`` of a ccxt error, with the socket's own reason when there is one (refused ...)."""
    cause = re.search(r"\[Errno -?\d+\] [^'\")]+", str(error.__cause__ or ""))
    return f"{type(error).__name__}: {quoted(error)}" + (f"; {cause.group(0)}" if cause else "")


def _open_ms(candle, exchange_id: str, pair: str) -> int:
    """A candle's open time in ms (ccxt's raw methods give every number as text)."""
    opened = _integer(candle[0] if isinstance(candle, list) and candle else None)
    if opened is None or opened % SLOT_MS:
        raise FeedProblem(f"{exchange_id} {pair}: malformed answer: candle {quoted(candle)} opens off a 5-minute slot")
    return opened


def _integer(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() and len(value) < 20 else None


def _number(value, candle) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise FeedProblem(f"malformed answer: {quoted(value)} in candle {quoted(candle)} is not a price or volume")
    return number


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
