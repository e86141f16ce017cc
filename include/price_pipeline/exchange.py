"""The exchange feed: each pair's closed 5-minute candles from its exchange, through ccxt, written to the
pair's ingestion key exactly as an outside producer would write them.

What is written, when, how often, from which exchange (the rules file's ``feed``, ``rules.Source``) and what
is refused is README's "Exchange feed". A candle is closed by the wall clock ``now``: whether it closed is a
fact of the exchange's time, not of the run's. Plain functions, no Airflow: the DAGs' tasks (``runs``) and
``make backfill`` call them; ccxt is imported where an exchange is made, never when a DAG is parsed.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace

from botocore.exceptions import ClientError

from include.glue.price_glue.formats import Rejected
from include.glue.price_glue.validation import records_of
from include.price_pipeline import layout, store
from include.price_pipeline.alerts import quoted
from include.price_pipeline.rules import QUOTE_VOLUME_EXCHANGES

SLOT_MS = layout.SLOT_SECONDS * 1000
#: Most candles one request asks for (Binance's klines limit; ccxt passes it on for other exchanges).
PAGE = 1000
TRIES = 4
BACKOFF_SECONDS = 1.0
#: ccxt's timeout: it bounds each read of an answer, not the answer.
TIMEOUT_MS = 10_000
#: Longest one request may take as a whole; one over it is not tried again in this fetch (README).
DEADLINE_SECONDS = 20.0
#: A rate limit's Retry-After longer than this is not waited out within the task: the pair is a problem.
MAX_RETRY_AFTER_SECONDS = 30
RECORD_SUFFIX = ".json"
#: How many windows not served, or refused, a pair's summary names (it counts them all).
NAMED = 20
#: The Glue job's own reading of a record: what the feed writes, the job accepts.
_JOB = SimpleNamespace(aliases=json.loads(layout.FIELD_ALIASES_PATH.read_text()))
_MS_DIGITS = re.compile(r"[0-9]{1,15}")


class FeedProblem(Exception):
    """A pair's candles could not be had, or a candle cannot be trusted; the message is one line.
    ``unreachable``: the exchange itself did not answer in time or refused for its rate limit, after every
    try (its other pairs are not asked again in this fetch)."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class Fetched:
    """What one fetch did for a pair: keys written, windows that already had a record, windows the exchange
    served no candle for (stamps), windows refused (a line each, naming the candles), and the pair's
    problems (one line each: nothing was fetched for it)."""

    exchange: str
    written: list[str] = field(default_factory=list)
    present: int = 0
    not_served: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    passing: bool = False  # a problem another try may not have: the exchange unreachable, S3 refusing

    def summary(self) -> dict:
        """Counts, and the first NAMED windows not served and refusals, then how many more there are."""

        def named(items: list[str]) -> list[str]:
            return items[:NAMED] + ([f"and {len(items) - NAMED} more"] if len(items) > NAMED else [])

        return {"written": len(self.written), "present": self.present, "not_served": len(self.not_served),
                "refused": len(self.refused), "windows_not_served": named(self.not_served),
                "refusals": named(self.refused), "problems": self.problems}  # fmt: skip


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


def candles(exchange, source, pair: str, start: datetime, end: datetime, sleep=time.sleep,
            deadline: float = DEADLINE_SECONDS) -> list:  # fmt: skip
    """The pair's candles opening in ``[start, end)`` as the exchange answered them, page by page: raw klines
    for an exchange with quote volume, else ccxt's unified ``[ms, open, high, low, close, volume]``; an item
    whose open time does not read is kept (``records`` reports it)."""
    start_ms, end_ms = _ms(start), _ms(end)
    found: list = []
    for since in range(start_ms, end_ms, PAGE * SLOT_MS):  # each page asks for its own span: none is skipped
        until = min(end_ms, since + PAGE * SLOT_MS)
        page = _call(lambda since=since, until=until: _page(exchange, source, pair, since, until), exchange, pair,
                     sleep, deadline=deadline)  # fmt: skip
        if not isinstance(page, list):
            raise FeedProblem(f"{exchange.id} {pair}: malformed answer (not a list of candles): {quoted(page)}")
        found += [candle for candle in page if (opened := open_ms(candle)) is None or since <= opened < until]
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


def records(source, pair: str, found: list, wanted: list[datetime], now: datetime):
    """``(bodies by window, refused lines, windows not served)`` of the pair's candles ``found`` for the
    windows ``wanted``. A window gets its one candle (identical copies are one) when ``record`` takes it; two
    different candles, or one refused, leave it without a record and give a line naming the pair, the window
    and the values; a candle whose open time does not read gives a line and no window."""
    name, by_window, refused = f"{source.exchange} {pair}", {}, []
    for candle in found:
        opened = open_ms(candle)
        if opened is None:
            refused.append(f"{name}: a candle without an open time in ms: {quoted(candle)}")
        elif candle not in (same := by_window.setdefault(opened - opened % SLOT_MS, [])):
            same.append(candle)
    bodies, not_served = {}, []
    for slot in wanted:
        served, at = by_window.get(_ms(slot), []), f"{name} {slot:%Y-%m-%d %H:%M} UTC"
        try:
            if len(served) > 1:
                raise FeedProblem(f"{len(served)} different candles, {quoted(served[0])} and {quoted(served[1])}")
            if served:
                bodies[slot] = record(source, served[0], slot, now)
            else:
                not_served.append(layout.slot_stamp(slot))
        except FeedProblem as problem:
            refused.append(f"{at}: {problem}")
    return bodies, refused, not_served


def record(source, candle, slot: datetime, now: datetime) -> bytes:
    """The bytes written for the candle of ``slot``: the exchange's kline (times and trade count as numbers,
    as Binance sends them; ccxt's raw methods give every number as text), or for a typical_price pair ccxt's
    unified candle as a record declaring that basis. FeedProblem (the reason, without the exchange, pair and
    window) for a candle off the window's start, still open at ``now``, or that the Glue job would refuse:
    its own reading of the bytes is the one definition of a candle and of a number."""
    if open_ms(candle) != _ms(slot):
        raise FeedProblem(f"candle opens off the window's start: {quoted(candle)}")
    if _ms(slot) + SLOT_MS > _ms(now):
        raise FeedProblem(f"candle is still open (closes {slot + layout.SLOT:%H:%M:%S} UTC)")
    if source.weighted_average == "volumes":
        kline = [_integer(value) if index in (0, 6, 8) and _integer(value) is not None else value
                 for index, value in enumerate(candle)]  # fmt: skip
        body = json.dumps([kline]).encode()
    elif len(candle) == 6:
        prices = dict(zip(("open", "high", "low", "close", "quoteVolume"), candle[1:], strict=True))
        body = json.dumps({"date": _ms(slot) // 1000, **prices, "weightedAverageBasis": "typical_price"}).encode()
    else:
        raise FeedProblem(f"candle has {len(candle)} values, not 6: {quoted(candle)}")
    try:
        records_of(body, _JOB, "", "")
    except Rejected as refused:  # one record: its reason is "record 0: ..."
        raise FeedProblem(f"{quoted(str(refused).removeprefix('record 0: '))} in candle {quoted(candle)}") from None
    return body


#: Workers asking one exchange at once (each its own ccxt instance and connection), all within one limiter.
WORKERS_PER_EXCHANGE = 16


class SharedLimiter:
    """The request budget of one exchange, for all the workers asking it (ccxt's own limiter paces one
    instance only). ccxt's ``rateLimit`` ms per unit of cost is the exchange's budget (Binance: 6,000 request
    weight a minute per IP is 1,200 units; a klines request costs 0.4). A third of a minute's budget may go at
    once (1,000 klines requests), the rest comes at two thirds of ccxt's pace: no 60 s ever ask more than the
    minute allows, and a live window of 1,000 pairs is asked without waiting (README "Exchange feed"). A
    refusal for the rate limit holds every worker for the wait asked (``hold``), and once a pair's tries find
    the exchange unreachable (``closed_by``) no worker asks it again in this fetch."""

    BURST = 1 / 3

    def __init__(self, rate_limit_ms: float, sleep=time.sleep):
        minute = 60_000 / rate_limit_ms  # units of cost a minute allows
        self.interval = 60 / ((1 - self.BURST) * minute)  # seconds per unit, the pace after a burst
        self.tolerance = self.BURST * minute * self.interval  # how far ahead of the pace a burst may go
        self.lock, self.due, self.sleep = threading.Lock(), 0.0, sleep
        self.closed_by: str | None = None

    def __call__(self, cost: float | None = None) -> None:
        if self.closed_by:
            raise FeedProblem(f"not asked again, as for {self.closed_by}", unreachable=True)
        with self.lock:  # a cell rate limiter: ``due`` is when the budget spent so far is earned back
            now = time.monotonic()
            due = max(self.due, now)
            at = max(now, due - self.tolerance)
            self.due = due + (1 if cost is None else cost) * self.interval
        if at > now:
            self.sleep(at - now)

    def hold(self, seconds: float) -> None:
        """No request of any worker for ``seconds`` from now."""
        with self.lock:
            self.due = max(self.due, time.monotonic() + seconds + self.tolerance)


def write_candles(s3, config, rule_set, start: datetime, end: datetime, now: datetime,
                  connect_to: Callable = connect, sleep=time.sleep, deadline: float = DEADLINE_SECONDS,
                  ) -> dict[str, Fetched]:  # fmt: skip
    """Fetch and write every configured pair's closed candles of ``[start, end)`` that have no record yet
    (one window: the live feed; a range: history, paged). Each exchange is asked on its own, by up to
    WORKERS_PER_EXCHANGE workers sharing its :class:`SharedLimiter`. Returns each pair's :class:`Fetched`:
    a refused window costs that window only; a pair's problem (one line) costs its windows, and an exchange
    found unreachable is not asked for the pairs not yet asked."""
    slots = layout.slots_between(start, end)
    present = store.records_present(s3, config.bucket, config.ingestion_prefix, slots, rule_set.default_pair)
    done = {pair: Fetched(source.exchange) for pair, source in rule_set.feed.items()}
    by_exchange: dict[str, list[str]] = {}
    for pair, source in rule_set.feed.items():
        by_exchange.setdefault(source.exchange, []).append(pair)

    def ask_exchange(exchange_id: str) -> None:
        workers, limiter, lock = threading.local(), [], threading.Lock()  # the limiter: made with the first
        # worker's exchange, which knows its rate limit

        def ask(pair: str) -> None:
            fetched, source = done[pair], rule_set.feed[pair]
            wanted = [slot for slot in slots if (slot, pair) not in present]
            fetched.present = len(slots) - len(wanted)
            if not wanted:
                return
            if limiter and limiter[0].closed_by:
                fetched.problems.append(f"{exchange_id} {pair}: not asked, as for {limiter[0].closed_by}")
                fetched.passing = True
                return
            try:
                if not hasattr(workers, "exchange"):
                    workers.exchange = connect_to(exchange_id, config.exchange_url)
                    with lock:
                        limiter[:] = limiter or [SharedLimiter(workers.exchange.rateLimit)]
                    workers.exchange.throttle = limiter[0]
                found = candles(workers.exchange, source, pair, wanted[0], wanted[-1] + layout.SLOT, sleep, deadline)
            except FeedProblem as problem:
                fetched.problems.append(str(problem))
                fetched.passing = problem.unreachable
                if problem.unreachable and limiter and not limiter[0].closed_by:
                    limiter[0].closed_by = pair
                return
            bodies, fetched.refused, fetched.not_served = records(source, pair, found, wanted, now)
            try:
                fetched.written = [key for key in _write(s3, config, pair, bodies) if key]
            except ClientError as error:  # the writes that landed are there; the next fetch skips them
                fetched.problems.append(f"{exchange_id} {pair}: S3 refused a write ({quoted(error)})")
                fetched.passing = True
                return
            fetched.present += len(bodies) - len(fetched.written)

        with ThreadPoolExecutor(min(WORKERS_PER_EXCHANGE, len(by_exchange[exchange_id]))) as pool:
            list(pool.map(ask, by_exchange[exchange_id]))

    with ThreadPoolExecutor(max(1, len(by_exchange))) as pool:
        list(pool.map(ask_exchange, by_exchange))
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


def _call(request: Callable, exchange, pair: str, sleep, tries: int = TRIES, deadline: float = DEADLINE_SECONDS):
    """``request()`` within ``deadline`` seconds as a whole, tried again after 1, 2, 4 s (``BACKOFF_SECONDS``
    doubling, or the ``Retry-After`` the exchange asked for, up to MAX_RETRY_AFTER_SECONDS) when the exchange
    refuses for its rate limit or does not answer; an exchange's error answer is not tried again, nor a ban
    (HTTP 418), a longer wait asked, or a request past its deadline."""
    import ccxt

    shared = exchange.throttle if isinstance(getattr(exchange, "throttle", None), SharedLimiter) else None
    for attempt in range(1, tries + 1):
        wait = BACKOFF_SECONDS * 2 ** (attempt - 1)
        try:
            return _within(deadline, request)
        except TimeoutError:
            raise FeedProblem(f"{exchange.id} {pair}: no whole answer within {deadline:g} s; not asked again now",
                              unreachable=True) from None  # fmt: skip
        except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as error:  # 429 (Binance: DDoSProtection), 418
            what = f"rate-limited ({_reason(error)})"
            asked = _retry_after(exchange)
            if " 418 " in str(error) or (asked or 0) > MAX_RETRY_AFTER_SECONDS:
                raise FeedProblem(f"{exchange.id} {pair}: {what}; not asked again now", unreachable=True) from None
            wait = max(wait, asked or 0)
            if shared:  # the exchange's other workers wait as well
                shared.hold(wait)
        except FeedProblem as closed:  # the shared limiter's: another pair found the exchange unreachable
            raise FeedProblem(f"{exchange.id} {pair}: {closed}", unreachable=True) from None
        except ccxt.NetworkError as error:  # not reached, timed out, 5xx
            what = f"exchange down ({_reason(error)})"
        except ccxt.BadResponse as error:
            raise FeedProblem(f"{exchange.id} {pair}: malformed answer ({quoted(error)})") from None
        except ccxt.BaseError as error:
            raise FeedProblem(f"{exchange.id} {pair}: the exchange refused ({quoted(error)})") from None
        if attempt < tries:
            sleep(wait)
    raise FeedProblem(f"{exchange.id} {pair}: {what}, {tries} tries", unreachable=True)


def _within(seconds: float, request: Callable):
    """``request()`` on a thread of its own, waited for ``seconds`` at most (TimeoutError after them: the
    thread, a daemon, is left to its socket, which ccxt's per-read timeout may never close)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["answer"] = request()
        except Exception as error:  # noqa: BLE001 - raised on the caller's thread below
            outcome["error"] = error

    thread = threading.Thread(target=run, name="exchange-request", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]


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


def open_ms(candle) -> int | None:
    """A candle's open time in ms, None when it has none that reads."""
    return _integer(candle[0]) if isinstance(candle, list) and candle else None


def _integer(value) -> int | None:
    """A JSON integer, or one written in ASCII digits (ccxt's raw methods give every number as text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and _MS_DIGITS.fullmatch(value) else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
