"""The feed tasks' verdict (``runs._fetched``): a problem another try may not meet (the exchange unreachable
or rate-limiting, S3 refusing) is left to Airflow's retries; a refusal or a malformed answer fails at once,
since another try would only ask the same; either way one line per pair, naming its exchange."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.price_pipeline import runs
from include.price_pipeline.exchange import Fetched


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
