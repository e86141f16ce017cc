"""The feed tasks' verdict (``runs._fetched``): a problem another try may not meet (the exchange unreachable
or rate-limiting, S3 refusing) is left to Airflow's retries; a refusal or a malformed answer fails at once,
since another try would only ask the same; either way one line per pair, naming its exchange."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.price_pipeline import exchange, runs
from include.price_pipeline.alerts import quoted
from include.price_pipeline.exchange import FeedProblem, Fetched
from include.price_pipeline.rules import Source


def test_an_unreachable_exchange_is_retried_by_airflow():
    done = {"ETH/USDT": Fetched("binance", problems=["binance ETH/USDT: exchange down (...), 4 tries"], passing=True),
            "BTC/USDT": Fetched("binance", written=["k"])}  # fmt: skip
    with pytest.raises(runs.FeedFailed) as failed:
        runs._fetched(done, "window 2026-12-05 10:05 UTC", missing_is_a_problem=True)
    assert (
        str(failed.value) == "Feed problem, window 2026-12-05 10:05 UTC: binance ETH/USDT: exchange down (...), 4 tries"
    )


def test_a_refusal_fails_at_once_and_a_candle_not_served_is_a_problem_of_a_live_window_only():
    done = {"XYZ/USDT": Fetched("binance", problems=["binance XYZ/USDT: the exchange refused (Invalid symbol)"]),
            "BTC/USDT": Fetched("kraken", not_served=["20261205T1005Z"])}  # fmt: skip
    with pytest.raises(AirflowFailException) as failed:
        runs._fetched(done, "window 2026-12-05 10:05 UTC", missing_is_a_problem=True)
    assert str(failed.value).endswith(
        "binance XYZ/USDT: the exchange refused (Invalid symbol); "
        "kraken BTC/USDT: the exchange served no candle for window 2026-12-05 10:05 UTC"
    )
    history = {"BTC/USDT": Fetched("kraken", written=["k"], not_served=["20261205T1005Z"])}
    assert runs._fetched(history, "a range", missing_is_a_problem=False)["BTC/USDT"]["not_served"] == 1


#: A candle value or an exchange's error text as a hostile exchange (or a proxy) could send it: ESC, RLO, a
#: line break and a Slack mention.
HOSTILE = "\x1b[31m3120\u202e\nReason: all fine <!channel>"
SLOT = datetime(2026, 12, 5, 10, 5, tzinfo=UTC)


def assert_one_quoted_line(text: str) -> None:
    assert text.isascii()
    assert text.isprintable()  # no ESC, no line break
    assert "<!channel>" not in text


@pytest.mark.parametrize(
    ("source", "candle"),
    [
        (Source("kraken", "typical_price"), [int(SLOT.timestamp() * 1000), HOSTILE, "2", "1", "1.5", "10"]),
        (Source(), [int(SLOT.timestamp() * 1000), "1", "2", "1", "1.5", "10", 0, HOSTILE, 5]),
        (Source(), [HOSTILE]),
    ],
    ids=["typical-price-value", "kline-volume", "short-candle"],
)
def test_a_feed_problem_quotes_the_candle_it_read(source, candle):
    """Issue 35: *Feed problem* carried a candle's raw ESC, RLO and <!channel> to ops (and make run printed them)."""
    with pytest.raises(FeedProblem) as problem:
        exchange.record(source, candle, SLOT, SLOT + timedelta(hours=1))
    assert_one_quoted_line(str(problem.value))
    assert str(problem.value).endswith(quoted(candle))


def test_a_feed_problem_quotes_the_exchanges_error_text():
    import ccxt

    def refused():
        raise ccxt.ExchangeError(f"binance {HOSTILE}")

    with pytest.raises(FeedProblem) as problem:
        exchange._call(refused, SimpleNamespace(id="binance"), "ETH/USDT", sleep=lambda _: None)
    assert_one_quoted_line(str(problem.value))
    with pytest.raises(AirflowFailException) as failed:
        runs._fetched({"ETH/USDT": Fetched("binance", problems=[str(problem.value)])}, "window", True)
    assert_one_quoted_line(str(failed.value))
