"""Local exchange stand-in: Binance's public market-data API on loopback, answering with real candles.

It serves what the exchange feed (``include/price_pipeline/exchange.py``) asks through ccxt, in Binance's
own shapes: ``GET /api/v3/klines`` (klines: open time, open, high, low, close, base volume, close time,
quote volume, trades, taker volumes), ``GET /api/v3/exchangeInfo`` (the spot markets ccxt loads before a
unified ``fetch_ohlcv``), ``GET /api/v3/ping`` and ``/api/v3/time``. ccxt is pointed here by
``PRICE_EXCHANGE_URL=http://127.0.0.1:<port>/api/v3``; nothing else differs from the real API.

The candles are the repository's real Poloniex BTC_ETH candles (``tests/data/poloniex``), one row per
5-minute slot, cycling: slot ``t`` of a pair is row ``(t / 300 + offset(pair)) mod rows``, its prices
scaled to the pair's level (``LEVELS``; moves in % are the real ones) and its volumes turned into
Binance's (base volume = Poloniex quoteVolume, quote volume = that x the row's weightedAverage x scale,
so the VWAP is the row's weightedAverage x scale). Like Binance, it serves candles that opened by now, the last one
still open; a pair it does not list is Binance's error ``-1121 Invalid symbol`` (HTTP 400).

Faults, for tests: ``POST /_exchange/fault`` with ``{"mode": M, "count": N}`` makes the next N klines
requests answer ``rate_limit`` (HTTP 429, Binance's -1003 body, Retry-After 1 s; ``rate_limit_long``:
120 s), ``unavailable`` (503), ``malformed`` (a kline missing values), ``html`` (a 200 page that is not
JSON), ``slow`` (the answer one byte every ``"seconds"``, default 5: each read is quick, the answer never
is) or ``delayed`` (the answer whole, ``"seconds"`` later: a far exchange's round trip); ``GET
/_exchange/requests`` counts the klines requests served and the most it was answering at once (since the
last fault spec). ``POST /_exchange/damage`` with
``{"damages": [{"pair": P, "at": open_ms, "values": {index: value}, "width": N, "twin": bool}, ...]}``
serves P's kline opening at ``at`` with those values set (and cut to ``width`` values), or beside it a
second kline so changed when ``twin``: every request covering it, until the list is replaced. An exchange
that is down is this stand-in not running.

Run: ``python -m local.exchange --port 8765 [--data CSV]``. Stop with SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from local.feed import replay_rows

DATA = (
    Path(__file__).resolve().parents[1]
    / "tests"
    / "data"
    / "poloniex"
    / "poloniex_BTC_ETH_5m_2017-07-14_2017-08-09.csv"
)
SLOT_MS = 300_000
#: Price levels of the served pairs (the data's own level is about 0.085 BTC): any other pair is at 100.
LEVELS = {"ETH/USDT": 3000.0, "BTC/USDT": 90000.0, "SOL/USDT": 150.0}
QUOTES = ("USDT", "USDC", "BTC", "ETH", "EUR", "USD", "BNB")
MAX_LIMIT = 1000
FAULTS = ("rate_limit", "rate_limit_long", "unavailable", "malformed", "html", "slow", "delayed", "none")
DEFAULT_LIMIT = 500
#: Most requests one fault spec covers (a bench of 1,000 pairs delays each of theirs).
MAX_FAULTS = 100_000


class Candles:
    """The real candles and how they map to any pair and slot."""

    def __init__(self, path: Path = DATA):
        self.rows = replay_rows(str(path))
        self.level = sum(row["weightedAverage"] for row in self.rows) / len(self.rows)

    def offset(self, pair: str) -> int:
        return int.from_bytes(hashlib.sha256(pair.encode()).digest()[:4], "big") % len(self.rows)

    def kline(self, pair: str, opened_ms: int) -> list:
        """Binance's kline of ``pair`` for the candle opening at ``opened_ms``."""
        row = self.rows[(opened_ms // SLOT_MS + self.offset(pair)) % len(self.rows)]
        scale = LEVELS.get(pair, 100.0) / self.level

        def price(name: str) -> str:
            return f"{row[name] * scale:.8f}"

        # The quote volume is the base volume at the row's VWAP: the Poloniex row's own volume, rounded to 8
        # decimals, gives a VWAP up to 1e-4 off for candles of a few satoshis, outside [low, high].
        base_volume = row["quoteVolume"]
        quote_volume = round(base_volume, 8) * row["weightedAverage"] * scale
        return [
            opened_ms,
            price("open"),
            price("high"),
            price("low"),
            price("close"),
            f"{base_volume:.8f}",
            opened_ms + SLOT_MS - 1,
            f"{quote_volume:.8f}",
            int(base_volume * 3) if base_volume else 0,
            f"{base_volume / 2:.8f}",
            f"{quote_volume / 2:.8f}",
            "0",
        ]

    def klines(self, pair: str, start_ms: int, end_ms: int, limit: int, now_ms: int) -> Iterator[list]:
        opened = -(-start_ms // SLOT_MS) * SLOT_MS
        for _ in range(limit):
            if opened > min(end_ms, now_ms):
                return
            yield self.kline(pair, opened)
            opened += SLOT_MS


def symbol_pair(symbol: str) -> str | None:
    """``ETHUSDT`` -> ``ETH/USDT`` for the quotes served."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    return None


class Exchange:
    """The stand-in's state: the candles, the pending faults and the request count."""

    def __init__(self, candles: Candles, pairs: tuple[str, ...]):
        self.candles, self.pairs = candles, pairs
        self.faults: list[str] = []
        self.slow_seconds = 5.0
        self.damages: list[dict] = []
        self.requests = 0
        self.in_flight = self.most_at_once = 0
        self.lock = threading.Lock()

    def next_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            return self.faults.pop(0) if self.faults else None

    def damaged(self, pair: str, served: list[list]) -> list[list]:
        """``served`` with this pair's damages applied (see the module's docstring)."""
        out = []
        for kline in served:
            out.append(kline)
            for damage in (d for d in self.damages if d.get("pair") == pair and d.get("at") == kline[0]):
                changed = [damage["values"].get(str(index), value) for index, value in enumerate(kline)]
                changed = changed[: damage.get("width", len(changed))]
                out[-1:] = [kline, changed] if damage.get("twin") else [changed]
        return out


def handler(exchange: Exchange) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request on stderr, as the AWS stand-in logs
            sys.stderr.write(f"exchange: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

        def answer(self, status: int, body, content_type: str = "application/json", **headers: str) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            query = {name: values[-1] for name, values in parse_qs(url.query).items()}
            routes = {
                "/api/v3/klines": self.klines,
                "/api/v3/exchangeInfo": self.exchange_info,
                "/api/v3/ping": lambda _query: self.answer(200, {}),
                "/api/v3/time": lambda _query: self.answer(200, {"serverTime": int(time.time() * 1000)}),
                "/_exchange/requests": lambda _query: self.answer(
                    200, {"klines": exchange.requests, "most_at_once": exchange.most_at_once}
                ),
            }
            route = routes.get(url.path)
            if route is None:
                self.answer(404, {"code": -1, "msg": f"no route {url.path}"})
            else:
                route(query)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            path = urlsplit(self.path).path
            if path not in ("/_exchange/fault", "/_exchange/damage"):
                self.answer(404, {"code": -1, "msg": "no route"})
                return
            length = self.headers.get("Content-Length", "")
            try:
                spec = json.loads(self.rfile.read(int(length))) if length.isdigit() and int(length) <= 65536 else {}
            except ValueError:
                spec = {}
            if path == "/_exchange/damage":
                with exchange.lock:
                    exchange.damages = list(spec.get("damages", [])) if isinstance(spec, dict) else []
                self.answer(200, {"damages": len(exchange.damages)})
                return
            mode, count = (spec.get("mode"), spec.get("count", 1)) if isinstance(spec, dict) else (None, 0)
            if mode not in FAULTS or not isinstance(count, int) or not 0 <= count <= MAX_FAULTS:
                self.answer(400, {"code": -1, "msg": f"mode one of {FAULTS}, count 0 to {MAX_FAULTS}"})
                return
            with exchange.lock:
                exchange.faults = [mode] * count
                exchange.slow_seconds = float(spec.get("seconds", 5.0))
                exchange.most_at_once = exchange.in_flight  # counted again from this spec on
            self.answer(200, {"faults": len(exchange.faults)})

        def klines(self, query: dict) -> None:
            with exchange.lock:
                exchange.in_flight += 1
                exchange.most_at_once = max(exchange.most_at_once, exchange.in_flight)
            try:
                self.answer_klines(query)
            finally:
                with exchange.lock:
                    exchange.in_flight -= 1

        def answer_klines(self, query: dict) -> None:
            fault = exchange.next_fault()
            if fault in ("rate_limit", "rate_limit_long"):
                limit = "Too many requests; current limit is 6000 request weight per 1 MINUTE."
                wait = "1" if fault == "rate_limit" else "120"
                self.answer(429, {"code": -1003, "msg": limit}, Retry_After=wait)  # Binance says when to retry
                return
            if fault == "unavailable":
                self.answer(503, b"Service Unavailable", "text/plain")
                return
            if fault == "html":
                self.answer(200, b"<html><body>maintenance</body></html>", "text/html")
                return
            pair = symbol_pair(query.get("symbol", ""))
            if pair is None or (exchange.pairs and pair not in exchange.pairs):
                self.answer(400, {"code": -1121, "msg": "Invalid symbol."})
                return
            try:
                start = int(query.get("startTime", 0))
                end = int(query.get("endTime", 2**62))
                limit = min(int(query.get("limit", DEFAULT_LIMIT)), MAX_LIMIT)
            except ValueError:
                self.answer(400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
                return
            now = int(time.time() * 1000)
            if "startTime" not in query:  # Binance: the latest candles
                start = max(0, (min(end, now) // SLOT_MS - limit + 1) * SLOT_MS)
            served = exchange.damaged(pair, list(exchange.candles.klines(pair, start, end, limit, now)))
            if fault == "malformed":
                served = [kline[:5] for kline in served]
            if fault == "slow":
                self.drip(json.dumps(served).encode(), exchange.slow_seconds)
                return
            if fault == "delayed":
                time.sleep(exchange.slow_seconds)
            self.answer(200, served)

        def drip(self, body: bytes, seconds: float) -> None:
            """A 200 answer of ``body`` one byte every ``seconds``, until the client has gone."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(seconds)
            except OSError:
                self.close_connection = True

        def exchange_info(self, _query: dict) -> None:
            pairs = exchange.pairs or tuple(LEVELS)
            self.answer(200, {"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [],
                              "symbols": [market(pair) for pair in pairs]})  # fmt: skip

    return Handler


def market(pair: str) -> dict:
    """A spot market in exchangeInfo's shape, with what ccxt's parse_market reads."""
    base, quote = pair.split("/")
    return {
        "symbol": base + quote,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.00000001",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.00000001",
            },
            {"filterType": "LOT_SIZE", "minQty": "0.00000001", "maxQty": "9000000.00000000", "stepSize": "0.00000001"},
        ],
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
    }


def serve(port: int, host: str = "127.0.0.1", data: Path = DATA, pairs: tuple[str, ...] = ()) -> ThreadingHTTPServer:
    """The stand-in's server, bound (call ``serve_forever`` on it, or run it in a thread)."""
    server = ThreadingHTTPServer((host, port), handler(Exchange(Candles(data), pairs)))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data", type=Path, default=DATA, help="Poloniex-format CSV the candles come from")
    args = parser.parse_args(argv)
    server = serve(args.port, args.host, args.data)
    print(f"exchange stand-in on http://{args.host}:{args.port}/api/v3", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
