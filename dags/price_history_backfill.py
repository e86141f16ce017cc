"""
### Price history backfill, on demand

Analyses a whole range of 5-minute windows in a few tasks, where `price_notification` needs one run (and
one Glue job run) per window:

0. **fetch_exchange_history** (only with `fetch_from_exchange`): every pair's closed candles of the range
   that have no record yet, fetched from its exchange and written once, as `price_exchange_feed` does.
1. **normalize_price_history**: ONE run of the same Glue job normalizes every raw record of `[start, end)`
   to canonical CSV, or quarantines it.
2. **analyse_price_history**: every pair's windows, decided by the live DAG's rules, written to each
   window's ledger object byte for byte as `price_notification` would write it (a pair already `publishing`
   or `notified` is never overwritten); each pair's months are rewritten as Parquet; a summary goes to the
   task log and XCom.
3. **report_quarantine**: when any object of the range is quarantined, ops get ONE message for the run
   (counts and the commonest reasons). The run stays successful.

Breaches are recorded as `suppressed_backfill` unless `notify_on_backfill` is on: then each due breach is
claimed and published at most once, as in a live run. A range where no window has a usable record fails.

`start` and `end` are window starts in UTC such as `2025-03-01T00:00:00Z`; `end` is excluded. Running a
range again writes identical objects. Details: README "Backfill".
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.amazon.aws.notifications.sns import SnsNotifier
from airflow.sdk import Param, chain, dag, task

from include.price_pipeline import history, operators, settings

config = settings.load()
#: The pairs and their rules, validated now (one line naming the field).
rule_set = settings.load_rules(config)

notify_ops = SnsNotifier(
    aws_conn_id=config.aws_conn_id,
    target_arn=config.ops_topic_arn,
    subject=history.OPS_SUBJECT,
    message=history.OPS_MESSAGE,
)


@dag(
    schedule=None,
    start_date=pendulum.datetime(2017, 7, 14, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["prices", "backfill", "glue", "parquet"],
    default_args={**settings.DEFAULT_TASK_ARGS, "on_failure_callback": notify_ops},
    params={
        "start": Param(
            type="string",
            pattern=history.WINDOW_START_PATTERN,
            description="first window start, UTC, e.g. 2025-03-01T00:00:00Z",
        ),
        "end": Param(
            type="string",
            pattern=history.WINDOW_START_PATTERN,
            description="end of the range (excluded), a window start in UTC",
        ),
        "fetch_from_exchange": Param(
            False,
            type="boolean",
            description="first fetch the range's candles from each pair's exchange where a window has no record",
        ),
        **{name: Param(**spec) for name, spec in settings.policy_params(rule_set).items()},
    },
)
def price_history_backfill():
    @task(execution_timeout=timedelta(minutes=60))
    def fetch_exchange_history(params=None) -> dict:
        from include.price_pipeline import runs

        return runs.fetch_exchange_history(config, rule_set, params)

    # The one Glue job both DAGs share (settings.glue_job_spec), watched as the live task watches it (a run that
    # ends within seconds is not deferred); only this run's timeout is longer.
    normalize_price_history = operators.WindowGlueJobOperator(
        task_id="normalize_price_history",
        aws_conn_id=config.aws_conn_id,
        run_job_kwargs={"Timeout": history.GLUE_RANGE_TIMEOUT_MINUTES},
        **settings.glue_job_spec(config),
        script_args={
            **settings.glue_job_arguments(config),
            "--window_start": "{{ params.start }}",
            "--window_end": "{{ params.end }}",
        },
        verbose=True,
        deferrable=config.deferrable,
        **settings.glue_wait(history.GLUE_RANGE_TIMEOUT_MINUTES, config.glue_poll_seconds),
        # As the live task's: a try apache/airflow#72716 fails (a run that outlasted the short wait, then a trigger
        # firing at once) is retried 2 s later, not 20 s; the retry reattaches to the same Glue run.
        retry_delay=pendulum.duration(seconds=2),
    )

    @task(execution_timeout=timedelta(minutes=60))
    def analyse_price_history(params=None, dag_run=None) -> dict:
        from include.price_pipeline import runs

        return runs.analyse_price_history(config, rule_set, params, dag_run)

    @task
    def report_quarantine(summary: dict, dag_run=None) -> None:
        from include.price_pipeline import runs

        runs.report_quarantine(config, summary, dag_run)

    summary = analyse_price_history()
    chain(fetch_exchange_history(), normalize_price_history, summary, report_quarantine(summary))


price_history_backfill()
