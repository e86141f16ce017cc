"""
### Price notification, every 5 minutes

Each run owns one window `[data_interval_start, data_interval_end)` and the ETH price record whose
candle starts at `data_interval_start`:

1. **wait_for_price_record**: the raw object lands under
   `crypto/01-data-ingestion/year=/month=/day=/<YYYYMMDDTHHMM>Z<any extension>` (one prefix listing).
2. **normalize_price_record**: Glue Python shell job (0.0625 DPU) writes the canonical CSV under
   `crypto/02-data-analysis/`, or quarantines an object it cannot trust.
3. **compute_price_change**: absolute % change of `weightedAverage` against the previous record within
   the lookback; the decision goes to the ledger `crypto/03-price-changes/`.
4. **is_alert_due** / **publish_price_alert**: SNS alert when the change is above the threshold, at most
   once per window (the ledger is checked before and written right after publishing). Backfill runs
   and windows older than `max_alert_age` are recorded as suppressed unless `notify_on_backfill`.
   **post_slack_alert** (only when `PRICE_SLACK_CONN_ID` names a Slack webhook connection) posts the
   same alert to Slack after SNS accepted it.

Failures (a stale feed, a quarantined record, any task) go to the ops topic, not to subscribers.
Settings come from `PRICE_*` environment variables (see README); per-run knobs are the params below.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

import pendulum
from airflow.providers.amazon.aws.notifications.sns import SnsNotifier
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.providers.amazon.aws.operators.sns import SnsPublishOperator
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.slack.operators.slack_webhook import SlackWebhookOperator
from airflow.sdk import CronDataIntervalTimetable, Param, chain, dag, task

from include.price_pipeline import alerts, layout, settings

config = settings.load()
log = logging.getLogger(__name__)
#: States in which an earlier window's normalize_price_record will not write its CSV any more.
FINISHED_STATES = ["success", "failed", "skipped", "upstream_failed", "removed"]
#: How often a window waiting for an earlier one's normalization looks again.
PREVIOUS_WINDOW_POKE = timedelta(seconds=15)


def _skip_if_already_notified(context) -> None:
    """Publish guard: a cleared or retried publish never sends a window's alert twice."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk.exceptions import AirflowSkipException

    from include.price_pipeline import windows

    s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
    message_id = windows.already_notified(s3, config, context["data_interval_start"])
    if message_id:
        raise AirflowSkipException(f"window already notified as SNS message {message_id}")


def _record_notified(context, result) -> None:
    """Write the ledger entry as notified in the same task try that published it."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from include.price_pipeline import windows

    entry = context["ti"].xcom_pull(task_ids="compute_price_change", key="entry")
    s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
    windows.record_notified(s3, config, entry, result["MessageId"])


notify_ops = SnsNotifier(
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
    default_args={
        "owner": "price-alerts",
        "retries": 3,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
        "on_failure_callback": notify_ops,
    },
    user_defined_macros={
        "window_prefix": partial(layout.ingestion_window_prefix, prefix=config.ingestion_prefix),
        "iso": lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    },
    params={
        **{name: Param(**spec) for name, spec in settings.policy_params(config).items()},
    },
)
def price_notification():
    wait_for_price_record = S3KeySensor(
        task_id="wait_for_price_record",
        aws_conn_id=config.aws_conn_id,
        bucket_name=config.bucket,
        bucket_key="{{ window_prefix(data_interval_start) }}*",
        wildcard_match=True,
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
            "--window_start": "{{ iso(data_interval_start) }}",
            "--window_end": "{{ iso(data_interval_end) }}",
        },
        verbose=True,
        deferrable=config.deferrable,
        waiter_delay=5,
    )

    @task(multiple_outputs=True)
    def compute_price_change(params=None, data_interval_start=None, data_interval_end=None, dag_run=None, ti=None):
        from airflow.configuration import conf
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

        from include.price_pipeline import analysis, windows

        def still_normalizing(slots) -> int:
            """Earlier windows whose normalize_price_record has not finished (runs of a parallel backfill)."""
            counted = {"dag_id": dag_run.dag_id, "task_ids": ["normalize_price_record"], "logical_dates": slots}
            return ti.get_ti_count(**counted) - ti.get_ti_count(**counted, states=FINISHED_STATES)

        policy = analysis.Policy.from_params(params)
        due, why_not = analysis.due_for_subscribers(
            dag_run.run_type,
            data_interval_end,
            pendulum.now("UTC"),  # freshness of an alert is about the clock, not about what is processed
            config.max_alert_age_minutes,
            params["notify_on_backfill"],
        )
        s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
        link = alerts.run_url(conf.get("api", "base_url"), dag_run.dag_id, dag_run.run_id)
        analyse = partial(windows.analyse_window, s3, config, data_interval_start, policy, due, why_not, link)
        try:
            try:
                return analyse(still_normalizing=still_normalizing)
            except windows.WindowNotReady as waiting:
                started = ti.get_first_reschedule_date(get_current_context()) or pendulum.now("UTC")
                wait = timedelta(seconds=config.previous_window_wait_seconds)
                if pendulum.now("UTC") - started < wait:
                    # Up for reschedule frees the worker slot the earlier window's tasks may need.
                    raise AirflowRescheduleException(pendulum.now("UTC") + PREVIOUS_WINDOW_POKE) from waiting
                log.warning("%s; waited %s, analysing with the CSVs there are", waiting, wait)
                return analyse()
        except windows.WindowFailed as failure:
            raise AirflowFailException(str(failure)) from None

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
        pre_execute=_skip_if_already_notified,
        post_execute=_record_notified,
    )

    alert_tasks = [publish_price_alert]
    if config.slack_conn_id:
        post_slack_alert = SlackWebhookOperator(
            task_id="post_slack_alert",
            slack_webhook_conn_id=config.slack_conn_id,
            message=(
                "*{{ ti.xcom_pull(task_ids='compute_price_change', key='subject') }}*\n"
                "{{ ti.xcom_pull(task_ids='compute_price_change', key='message') }}"
            ),
        )
        alert_tasks.append(post_slack_alert)

    chain(
        wait_for_price_record,
        normalize_price_record,
        price_change,
        is_alert_due(price_change["decision"]),
        *alert_tasks,
    )


price_notification()
