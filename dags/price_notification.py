"""
### Price notification, every 5 minutes

Each run owns one window `[data_interval_start, data_interval_end)` and every configured pair's price
record whose candle starts at `data_interval_start`:

1. **wait_for_price_record**: the raw objects land under
   `crypto/01-data-ingestion/year=/month=/day=/<YYYYMMDDTHHMM>Z<any extension>` (the default pair) and
   `.../<YYYYMMDDTHHMM>Z/<BASE>_<QUOTE><any extension>` (other pairs); one prefix listing per look. A
   live window's run waits (deferred) for every pair's record, or once one is there, for
   `PRICE_PAIRS_DEADLINE_SECONDS` after the window ended: no pair is the clock, and the pairs still
   missing then are late. With none there it gives up at the sensor timeout (*Feed stale*). A backfill
   run, or a window that ended longer ago than the timeout, looks once and is skipped with the reason
   when no pair's record is there.
2. **normalize_price_record**: Glue Python shell job (0.0625 DPU) writes the canonical CSV under
   `crypto/02-data-analysis/`, or quarantines an object it cannot trust.
3. **compute_price_change**: the default pair's rule from the rules file (the params below override it for
   one run), decided by the rules engine as every pair's are; the decision goes to the ledger
   `crypto/03-price-changes/`.
4. **is_alert_due** / **publish_price_alert**: SNS alert when the change is above the threshold, at most
   once per window: compute_price_change claims the window in the ledger with a conditional write
   (`publishing`), only the run whose claim landed publishes, and it replaces its claim with `notified`.
   Backfill runs and windows older than `max_alert_age` are recorded as suppressed unless
   `notify_on_backfill` (a live breach suppressed for lateness is reported to ops).
   **post_slack_alert** (only when `PRICE_SLACK_CONN_ID` names a Slack webhook connection) posts the
   same alert, escaped for Slack, after SNS accepted it.

**Many pairs** (`PRICE_RULES_FILE` lists more than the default pair): the same Glue run normalizes every
pair's record of the window; **analyse_pairs** decides each other pair's rules in one task (one ledger
entry per pair and window, all pairs in one ledger object) and **publish_pair_alerts** publishes each due
(pair, rule) alert once, in parallel. A pair without a record is late, the default pair included (its
analysis is skipped): analyse_pairs tells ops which pairs were late for a live window.

An analysis waits (up for reschedule) only for an earlier window whose record is there and whose run can
still normalize it, the same rule for every pair: a missing record holds nobody.

A run without a logical date (REST or CLI trigger with none) analyses the latest window complete when it
was triggered. Failures of live runs (a stale feed, a quarantined record, a claim left by a crash, any
task) go to the ops topic, not to subscribers; a backfill's are reported to whoever ran it (`make backfill`,
the UI), not paged, but for a claim left, which only ops can release.
Settings come from `PRICE_*` environment variables and rules from `PRICE_RULES_FILE` (see README); the params
below override the default pair's rule for one run.
"""

from __future__ import annotations

from functools import partial

import pendulum
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.providers.amazon.aws.operators.sns import SnsPublishOperator
from airflow.sdk import CronDataIntervalTimetable, Param, chain, dag, task

from include.price_pipeline import alerts, layout, pairs, runs, settings

config = settings.load()
#: The pairs and their rules, validated now: a bad file fails the parse with one line naming the field.
rule_set = settings.load_rules(config)
other_pairs = pairs.other_pairs(rule_set)

notify_ops = runs.LiveRunsOpsNotifier(
    aws_conn_id=config.aws_conn_id,
    target_arn=config.ops_topic_arn,
    subject=alerts.OPS_SUBJECT,
    message=alerts.OPS_MESSAGE,
)


@dag(
    schedule=CronDataIntervalTimetable("*/5 * * * *", timezone="UTC"),
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
        **{name: Param(**spec) for name, spec in settings.policy_params(rule_set.default_rule).items()},
    },
)
def price_notification():
    wait_for_price_record = runs.WindowRecordSensor(
        task_id="wait_for_price_record",
        aws_conn_id=config.aws_conn_id,
        bucket_name=config.bucket,
        prefix=config.ingestion_prefix,
        pairs=list(rule_set.pairs),
        default_pair=config.pair,
        deadline_seconds=config.pairs_deadline_seconds,
        deferrable=config.deferrable,
        poke_interval=config.sensor_poke_seconds,
        timeout=config.sensor_timeout_seconds,
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

    @task(multiple_outputs=True)
    def compute_price_change(params=None, data_interval_start=None, dag_run=None, ti=None):
        return runs.compute_price_change(config, rule_set, params, data_interval_start, dag_run, ti)

    @task.short_circuit
    def is_alert_due(decision: str) -> bool:
        return decision == "notify"

    price_change = compute_price_change()

    publish_price_alert = SnsPublishOperator(
        task_id="publish_price_alert",
        aws_conn_id=config.aws_conn_id,
        target_arn=config.alert_topic_arn,
        subject=price_change["subject"],
        message=price_change["message"],
        message_attributes=price_change["attributes"],
        pre_execute=partial(runs.publish_guard, config),
        post_execute=partial(runs.record_notified, config),
    )

    alert_tasks = [publish_price_alert]
    if config.slack_conn_id:
        # Imported only when used: every task start parses this file, and slack_sdk adds ~0.2 s to each.
        from airflow.providers.slack.operators.slack_webhook import SlackWebhookOperator

        post_slack_alert = SlackWebhookOperator(
            task_id="post_slack_alert",
            slack_webhook_conn_id=config.slack_conn_id,
            message="{{ ti.xcom_pull(task_ids='compute_price_change', key='slack') }}",
        )
        alert_tasks.append(post_slack_alert)

    chain(
        wait_for_price_record,
        normalize_price_record,
        price_change,
        is_alert_due(price_change["decision"]),
        *alert_tasks,
    )

    if other_pairs:

        @task
        def analyse_pairs(params=None, data_interval_start=None, dag_run=None, ti=None) -> list[dict]:
            return runs.analyse_pairs(config, rule_set, params, data_interval_start, dag_run, ti)

        @task
        def publish_pair_alerts(due: list[dict], data_interval_start=None, dag_run=None) -> dict:
            return runs.publish_pair_alerts(config, due, data_interval_start, dag_run)

        pair_alerts = analyse_pairs()
        chain(normalize_price_record, pair_alerts, publish_pair_alerts(pair_alerts))


price_notification()
