"""
### Exchange feed, every 5 minutes

A producer the project ships: prices from an exchange without writing one. Each run owns the window
`[data_interval_start, data_interval_end)`:

**fetch_exchange_candles**: every configured pair's closed candle opening at `data_interval_start`, from the
exchange the rules file's `feed` names for it (default: Binance), through ccxt, written once to the pair's
ingestion key as the exchange's own record, where the pair has no record yet: `price_notification` then
decides it as any producer's. A pair that still has no candle after the retries fails the task with one line
naming the exchange and the pair: the exchange's *Feed problem* incident for ops, paged when it opens,
resolved by the first window whose fetch succeeds (README "Ops incidents").

`PRICE_EXCHANGE_URL` points ccxt's Binance-API exchanges at another base URL (the local exchange stand-in).
Past candles: `price_history_backfill` with `fetch_from_exchange`. Details: README "Exchange feed".
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from include.price_pipeline import operators, runs, settings

config = settings.load()
#: The pairs and where each one's candles come from, validated now (one line naming the field).
rule_set = settings.load_rules(config)


@dag(
    schedule=operators.every_window(),
    start_date=pendulum.datetime(2017, 7, 14, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    doc_md=__doc__,
    tags=["prices", "feed", "exchange"],
    default_args={**settings.DEFAULT_TASK_ARGS, **operators.incident_callbacks(config)},
)
def price_exchange_feed():
    # Each try asks the pairs still without a record; retries come about 20, 40, 80 s later.
    @task(execution_timeout=timedelta(minutes=4))
    def fetch_exchange_candles(data_interval_start=None, dag_run=None) -> dict:
        return runs.fetch_exchange_candles(config, rule_set, data_interval_start, dag_run)

    fetch_exchange_candles()


price_exchange_feed()
