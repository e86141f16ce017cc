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
3. **compute_price_change**: absolute % change of `weightedAverage` against the previous record within
   the lookback; the decision goes to the ledger `crypto/03-price-changes/`.
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
Settings come from `PRICE_*` environment variables (see README); per-run knobs are the params below.
"""

from __future__ import annotations

import logging
from functools import partial

import pendulum
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.providers.amazon.aws.operators.sns import SnsPublishOperator
from airflow.sdk import CronDataIntervalTimetable, Param, chain, dag, task

from include.price_pipeline import alerts, layout, pairs, runs, settings, windows

config = settings.load()
#: The pairs and their rules, validated now: a bad file fails the parse with one line naming the field.
rule_set = settings.load_rules(config)
other_pairs = pairs.other_pairs(rule_set)
log = logging.getLogger(__name__)


def _claimant(dag_run) -> str:
    """Who claims a window in the ledger: this DAG run."""
    return f"{dag_run.dag_id}/{dag_run.run_id}"


def _only_on_our_claim(start_publish) -> None:
    """Publish guard: ``start_publish(s3)`` returns only when this run's claim is the ledger entry and no
    try published it yet; skip when it was notified or is claimed elsewhere, fail on a claim left."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        start_publish(S3Hook(aws_conn_id=config.aws_conn_id).get_conn())
    except (windows.AlreadyNotified, windows.ClaimLost) as reason:
        log.warning("%s", reason)
        raise AirflowSkipException(str(reason)) from None
    except windows.ClaimLeft as left:
        raise AirflowFailException(str(left)) from None


def _publish_only_on_our_claim(context) -> None:
    """Publish guard of the default pair: only the run whose claim is the ledger entry, only once."""
    slot = windows.run_window_start(context.get("data_interval_start"), context["dag_run"].run_after)
    _only_on_our_claim(lambda s3: windows.start_publish(s3, config, slot, _claimant(context["dag_run"])))


def _record_notified(context, result) -> None:
    """Replace this run's claim with the notified entry in the same task try that published it."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    entry = context["ti"].xcom_pull(task_ids="compute_price_change", key="entry")
    s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
    windows.record_notified(s3, config, entry, result["MessageId"], _claimant(context["dag_run"]))


def _due(params, dag_run, window_start) -> tuple[bool, str]:
    """Whether the window's breaches may notify subscribers (freshness is about the clock, not about
    what is processed), and if not, why."""
    from include.price_pipeline import analysis

    return analysis.due_for_subscribers(
        dag_run.run_type,
        window_start + layout.SLOT,
        pendulum.now("UTC"),
        config.max_alert_age_minutes,
        params["notify_on_backfill"],
    )


def _window_start(dag_run):
    return windows.run_window_start(dag_run.data_interval_start, dag_run.run_after)


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
        "window_start": _window_start,
        "iso": layout.iso,
        "slot": layout.SLOT,
    },
    params={
        **{name: Param(**spec) for name, spec in settings.policy_params(config).items()},
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
        from airflow.configuration import conf
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from include.price_pipeline import analysis

        window_start = windows.run_window_start(data_interval_start, dag_run.run_after)
        if data_interval_start is None:
            log.info(
                "Run without a logical date (triggered for %s): analysing the latest complete window, %s",
                dag_run.run_after,
                layout.iso(window_start),
            )
        policy = analysis.Policy.from_params(params)
        due, why_not = _due(params, dag_run, window_start)
        s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
        link = alerts.run_url(conf.get("api", "base_url"), dag_run.dag_id, dag_run.run_id)
        analyse = partial(
            windows.analyse_window, s3, config, window_start, policy, due, why_not, link, claimant=_claimant(dag_run)
        )
        try:
            result = runs.analyse_when_settled(ti, analyse, config.previous_window_wait_seconds)
        except windows.RecordMissing as late:
            if not other_pairs:
                raise AirflowFailException(str(late)) from None
            raise AirflowSkipException(f"{config.pair} is late: {late} (analyse_pairs reports it)") from None
        except (windows.WindowFailed, alerts.UnsafeText) as failure:
            raise AirflowFailException(str(failure)) from None
        if result.get("ops_notice"):
            runs.tell_ops(config, f"[price pipeline] Late breach not sent: {layout.slot_stamp(window_start)}",
                          result["ops_notice"])  # fmt: skip
        keys = ("decision", "entry", "subject", "message", "attributes", "slack")
        return {key: result.get(key) for key in keys}

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
        pre_execute=_publish_only_on_our_claim,
        post_execute=_record_notified,
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
            """Every other pair's rules for the window; the due alerts, for publish_pair_alerts."""
            from airflow.configuration import conf
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            window_start = windows.run_window_start(data_interval_start, dag_run.run_after)
            due, why_not = _due(params, dag_run, window_start)
            link = alerts.run_url(conf.get("api", "base_url"), dag_run.dag_id, dag_run.run_id)
            s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
            analyse = partial(
                pairs.analyse_pairs, s3, config, rule_set, window_start, due, why_not, link, _claimant(dag_run)
            )
            result = runs.analyse_when_settled(ti, analyse, config.previous_window_wait_seconds)
            stamp = layout.slot_stamp(window_start)
            if result["late"]:
                log.warning("Pairs late for window %s: %s", stamp, result["late"])
            if result["late"] and due:  # a live window: ops hear of it (a backfill of old windows only logs it)
                runs.tell_ops(config, f"[price pipeline] Pairs late: {stamp}",
                              pairs.late_notice(window_start, result["late"], link))  # fmt: skip
            if result["ops_notice"]:
                runs.tell_ops(config, f"[price pipeline] Late breach not sent: {stamp}", result["ops_notice"])
            return result["alerts"]

        @task
        def publish_pair_alerts(due: list[dict], data_interval_start=None, dag_run=None) -> dict:
            """Each due (pair, rule) alert once: only this run's claims, marked in the ledger around each Publish."""
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from airflow.providers.amazon.aws.hooks.sns import SnsHook
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            if not due:
                raise AirflowSkipException("no pair alert is due in this window")
            window_start = windows.run_window_start(data_interval_start, dag_run.run_after)
            sns = SnsHook(aws_conn_id=config.aws_conn_id)

            def publish(alert: dict) -> str:
                kwargs = {"subject": alert["subject"], "message_attributes": alert["attributes"]}
                return sns.publish_to_target(config.alert_topic_arn, alert["message"], **kwargs)["MessageId"]

            s3 = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
            result = pairs.publish_alerts(s3, config, window_start, due, _claimant(dag_run), publish)
            for reason in result["skipped"]:
                log.warning("%s", reason)
            log.info("Published %d pair alerts: %s", len(result["sent"]), result["sent"])
            if result["failed"]:  # not sent: the task's retry publishes them (and reports any left again)
                raise RuntimeError("; ".join(result["failed"] + result["left"]))
            if result["left"]:
                raise AirflowFailException("; ".join(result["left"]))
            return result["sent"]

        pair_alerts = analyse_pairs()
        chain(normalize_price_record, pair_alerts, publish_pair_alerts(pair_alerts))


price_notification()
