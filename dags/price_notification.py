"""
### Price notification, every 5 minutes

Each run owns one window `[data_interval_start, data_interval_end)` and every configured pair's price
record whose candle starts at `data_interval_start`:

1. **wait_for_price_record** (`S3KeySensor`, subclassed): waits (deferred) for every pair's raw object under
   `crypto/01-data-ingestion/.../<YYYYMMDDTHHMM>Z/<BASE>_<QUOTE><any extension>`, or once one is there, for
   `PRICE_PAIRS_DEADLINE_SECONDS` after the window ended (the pairs still missing are late). With none there
   it gives up at the sensor timeout (*Feed stale*); a backfill run, or an old window, looks once.
2. **normalize_price_record** (`GlueJobOperator`, subclassed): Glue Python shell job (0.0625 DPU) writes the
   window's canonical CSV (a row per pair), or quarantines an object it cannot trust; deferred while it runs,
   unless it ends within 3 s (a deferral costs a second task start).
3. **analyse_pairs**: every pair's rules, decided by one engine; every decision goes to the window's ledger
   object, and a due rule is claimed there with a conditional write (`publishing`). With no pair's record to
   decide, the task fails.
4. **publish_price_alerts** (`SnsPublishOperator`, subclassed, mapped): one task instance per due alert,
   each (pair, rule, window) at most once, recorded `notified` with its SNS message id. Backfill runs and
   windows older than `max_alert_age` are recorded as suppressed unless `notify_on_backfill`.
   **post_slack_alerts** (only with `PRICE_SLACK_CONN_ID`) posts the alerts SNS accepted in one message.
5. **report_window_to_ops**, beside the publish: the window's news for ops (pairs late, alerts not sent).

The analysis waits only for an earlier window whose record is there and whose run can still normalize it.
A run without a logical date analyses the latest window complete when it was triggered. Failures of live
runs and late pairs are ops incidents (README "Ops incidents"): paged when they open, reminded while they last,
resolved by the first healthy window. A backfill's failures go to whoever ran it, but for a claim left, which
only ops can release.
Settings come from `PRICE_*` environment variables and rules from `PRICE_RULES_FILE` (see README); the params
below override a named pair's change rule for one run (`pair`, `rule`; the numbers left empty are the rule's own).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, chain, dag, task

from include.price_pipeline import layout, operators, runs, settings

config = settings.load()
#: The pairs and their rules, validated now: a bad file fails the parse with one line naming the field.
rule_set = settings.load_rules(config)


@dag(
    schedule=operators.every_window(),
    start_date=pendulum.datetime(2017, 7, 14, tz="UTC"),
    catchup=False,
    max_active_runs=16,
    doc_md=__doc__,
    tags=["prices", "alerts", "glue", "sns"],
    default_args={**settings.DEFAULT_TASK_ARGS, **operators.incident_callbacks(config)},
    user_defined_macros={
        "window_start": runs.window_start,
        "iso": layout.iso,
        "slot": layout.SLOT,
    },
    params={
        **{name: Param(**spec) for name, spec in settings.policy_params(rule_set).items()},
    },
)
def price_notification():
    wait_for_price_record = operators.WindowRecordSensor(
        task_id="wait_for_price_record",
        aws_conn_id=config.aws_conn_id,
        bucket_name=config.bucket,
        prefix=config.ingestion_prefix,
        pairs=list(rule_set.pairs),
        default_pair=rule_set.default_pair,
        deadline_seconds=config.pairs_deadline_seconds,
        deferrable=config.deferrable,
        poke_interval=config.sensor_poke_seconds,
        timeout=config.sensor_timeout_seconds,
        # A try resumed before the scheduler saw its deferral end is failed for a retry (apache/airflow#72716):
        retry_delay=pendulum.duration(seconds=2),  # then it looks again at once, not 20 s later
    )

    normalize_price_record = operators.WindowGlueJobOperator(
        task_id="normalize_price_record",
        aws_conn_id=config.aws_conn_id,
        **settings.glue_job_spec(config),
        script_args={
            **settings.glue_job_arguments(config),
            "--window_start": "{{ iso(window_start(dag_run)) }}",
            "--window_end": "{{ iso(window_start(dag_run) + slot) }}",
        },
        verbose=True,
        deferrable=config.deferrable,
        **settings.glue_wait(settings.GLUE_JOB_TIMEOUT_MINUTES, config.glue_poll_seconds),
        # As the sensor's: a try apache/airflow#72716 fails (a run that outlasted the short wait, then a trigger
        # firing at once) is retried 2 s later, not 20 s; the retry reattaches to the same Glue run.
        retry_delay=pendulum.duration(seconds=2),
    )

    @task
    def analyse_pairs(params=None, data_interval_start=None, dag_run=None, ti=None) -> list[dict]:
        return runs.analyse_pairs(config, rule_set, params, data_interval_start, dag_run, ti)

    # Beside the publish, not before it: an ops topic that cannot be told holds back no alert, and either
    # failing fails the run.
    @task(retry_delay=pendulum.duration(seconds=5))
    def report_window_to_ops(ops: dict, ti=None) -> None:
        runs.report_window_to_ops(config, ops, ti)

    @task(trigger_rule="none_failed_min_one_success")
    def post_slack_alerts(due: list[dict], published) -> None:
        runs.post_slack_alerts(config, due, published)

    pair_alerts = analyse_pairs()
    publish_price_alerts = operators.AlertPublishOperator.partial(
        task_id="publish_price_alerts",
        aws_conn_id=config.aws_conn_id,
        target_arn=config.alert_topic_arn,
        map_index_template="{{ task.subject }}",
    ).expand_kwargs(pair_alerts)
    chain(
        wait_for_price_record,
        normalize_price_record,
        pair_alerts,
        [publish_price_alerts, report_window_to_ops(pair_alerts["ops"])],
    )
    if config.slack_conn_id:
        chain(publish_price_alerts, post_slack_alerts(pair_alerts, publish_price_alerts.output))


price_notification()
