"""One exchange's request budget shared by the feed's workers (``exchange.SharedLimiter``), on a clock of the
test's own: a third of a minute's budget may go at once, and no 60 s ever ask more than the minute allows
(Binance: 6,000 request weight a minute, ccxt's rateLimit 50 ms per unit, a klines request 0.4 units)."""

from __future__ import annotations

import pytest

from include.price_pipeline import exchange

KLINES_COST = 0.4
MINUTE_UNITS = 60 / 0.050  # 1,200 units: 6,000 weight


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(exchange.time, "monotonic", lambda: now[0])

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return now, sleep


def test_a_thousand_klines_requests_go_at_once_and_the_next_waits(clock):
    now, sleep = clock
    limiter = exchange.SharedLimiter(50, sleep)

    for _ in range(1000):
        limiter(KLINES_COST)
    at_once = now[0]
    for _ in range(10):
        limiter(KLINES_COST)

    assert at_once == 1000.0
    assert now[0] - at_once == pytest.approx(9 * KLINES_COST * limiter.interval)  # then at the pace


def test_no_sixty_seconds_ever_ask_more_than_the_minutes_budget(clock):
    now, sleep = clock
    limiter = exchange.SharedLimiter(50, sleep)
    sent = []
    for index in range(6000):  # bursts and pauses, as live windows and history pages come
        if index % 1500 == 0:
            now[0] += 45
        limiter(KLINES_COST)
        sent.append(now[0])

    heaviest = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    assert heaviest * KLINES_COST <= MINUTE_UNITS
