"""
### Price notification, every 5 minutes

Each run owns one window `[data_interval_start, data_interval_end)` and every configured pair's price
record whose candle starts at `data_interval_start`:

1. **wait_for_price_record** (the provider's `S3KeySensor`, subclassed): every pair's raw object lands under
   `crypto/01-data-ingestion/year=/month=/day=/<YYYYMMDDTHHMM>Z/<BASE>_<QUOTE><any extension>` (a producer's
   `<YYYYMMDDTHHMM>Z<any extension>` still counts as the default pair's); one prefix listing per look. A
   live window's run waits (deferred) for every pair's record, or once one is there, for
   `PRICE_PAIRS_DEADLINE_SECONDS` after the window ended: no pair is the clock, and the pairs still
   missing then are late. With none there it gives up at the sensor timeout (*Feed stale*). A backfill
   run, or a window that ended longer ago than the timeout, looks once and is skipped with the reason
   when no pair's record is there.
2. **normalize_price_record**: Glue Python shell job (0.0625 DPU) writes the window's canonical CSV (a row
   per pair) under `crypto/02-data-analysis/`, or quarantines an object it cannot trust.
3. **analyse_pairs**: every pair's rules from the rules file, decided by one engine (the params below
   override a named pair's change rule for one run); every decision goes to the window's ledger object under
   `crypto/03-price-changes/`, and a due rule is claimed there with a conditional write (`publishing`). A
   pair without a record (none there, or quarantined) is late (for a live window ops hear which, and why,
   from step 5). With no pair's record to decide, the task fails.
4. **publish_price_alerts** (the provider's `SnsPublishOperator`, subclassed, mapped): one task instance per
   due alert, named by its subject, each (pair, rule, window) at most once: only the run whose claim landed
   publishes, marks it started first and records it `notified` with its SNS message id after. Backfill runs
   and windows older than `max_alert_age` are recorded as suppressed unless `notify_on_backfill` (a live
   breach suppressed for lateness is reported to ops); with no alert due the task is skipped.
   **post_slack_alerts** (only when `PRICE_SLACK_CONN_ID` names a Slack webhook connection) posts the
   alerts SNS accepted, escaped for Slack, in one message.
5. **report_window_to_ops**, beside the publish: the window's notices for ops (pairs late, alerts not
   sent), so an ops topic that cannot be told holds back no alert (the task then fails, its log holding
   the notice, and so does the run).

The analysis waits (up for reschedule) only for an earlier window whose record is there and whose run can
still normalize it: a missing record holds nobody.

A run without a logical date (REST or CLI trigger with none) analyses the latest window complete when it
was triggered. Failures of live runs (a stale feed, late or quarantined records, a claim left by a crash,
any task) go to the ops topic, not to subscribers; a backfill's are reported to whoever ran it (`make backfill`,
the UI), not paged, but for a claim left, which only ops can release.
Settings come from `PRICE_*` environment variables and rules from `PRICE_RULES_FILE` (see README); the params
below override a named pair's change rule for one run (`pair`, `rule`; the numbers left empty are the rule's own).
"""

from __future__ import annotations

import pendulum
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.sdk import Param, chain, dag, task

from include.price_pipeline import layout, operators, runs, settings

config = settings.load()
#: The pairs and their rules, validated now: a bad file fails the parse with one line naming the field.
rule_set = settings.load_rules(config)

notify_ops = operators.live_ops_notifier(config)


@dag(
    schedule=operators.every_window(),
    start_date=pendulum.datetime(2017, 7, 14, tz="UTC"),
    catchup=False,
    max_active_runs=16,
    doc_md=__doc__,
    tags=["prices", "alerts", "glue", "sns"],
    default_args={**settings.DEFAULT_TASK_ARGS, "on_failure_callback": notify_ops},
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

    normalize_price_record = GlueJobOperator(
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
    )

    @task
    def analyse_pairs(params=None, data_interval_start=None, dag_run=None, ti=None) -> list[dict]:
        return runs.analyse_pairs(config, rule_set, params, data_interval_start, dag_run, ti)

    # Beside the publish, not before it: an ops topic that cannot be told holds back no alert, and either
    # failing fails the run.
    @task(retry_delay=pendulum.duration(seconds=5))
    def report_window_to_ops(notices: list[list[str]]) -> None:
        runs.report_window_to_ops(config, notices)

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
