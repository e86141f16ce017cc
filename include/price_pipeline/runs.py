"""What the price DAGs' tasks ask Airflow: the one module of ``include/`` that imports it.

- ``WindowRecordSensor``: a live window's run waits for every pair's record, or a deadline.
- ``still_normalizing`` / ``analyse_when_settled``: the scheduler's side of waiting on earlier windows.
- ``LiveRunsOpsNotifier``: failures page ops for live runs; a backfill's go to whoever ran it.
- the task bodies of both DAGs: the DAG files only declare and wire them.
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime, timedelta

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.notifications.sns import SnsNotifier
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import BaseNotifier, CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowFailException

from include.price_pipeline import alerts, layout, windows
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)
NORMALIZE_TASK = "normalize_price_record"
#: States in which a window's normalize_price_record will not write its CSV any more.
FINISHED_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")
#: Run states in which a run's tasks can still run (a failed run, a cancelled or completed backfill's,
#: never will, whatever state its task instances were left in).
ACTIVE_RUN_STATES = ("queued", "running")
#: How often a window waiting for an earlier one's normalization looks again.
PREVIOUS_WINDOW_POKE = timedelta(seconds=15)
#: How soon the sensor looks again after a wake-up that found no new pair (a key outside the grammar
#: matched the trigger's pattern): later than the poke interval, so such a key is no busy loop.
SLOW_LOOK = timedelta(seconds=30)


def _now() -> datetime:
    """A plain ``datetime``: a pendulum one makes pendulum intervals, which a deferral's timeout cannot
    carry to the supervisor (msgpack refuses them: the task failed instead of deferring)."""
    return datetime.now(UTC)


class WindowRecordSensor(S3KeySensor):
    """The provider's S3KeySensor on a window's records, one per configured pair: ``bucket_key`` is the
    patterns (``wildcard_match``) of the pairs still missing, and it waits deferred to the provider's
    S3KeyTrigger on them between looks. What it changes is the look, one listing of the window's prefix read
    by the key grammar (not a listing per pattern, whose matches may be keys outside it), and when it is done,
    for no pair is the window's clock:

    - every pair's record there: done;
    - some there and the window ended ``deadline_seconds`` ago: done; the missing pairs are *late* (the
      analysis reports them to ops), so one producer down delays the others by the deadline at most;
    - none there ``timeout`` seconds after the window ended: fails (ops hear *Feed stale*);
    - a run whose records should already be there (``windows.looks_once``: a backfill run, a window that
      ended longer ago than the timeout) lists once and goes on with the pairs there, or with none there is
      skipped with a one-line reason naming the window and what it listed: a missing record, no page.
    """

    def __init__(self, *, bucket_name: str, prefix: str, pairs: list[str], default_pair: str,
                 deadline_seconds: int, **kwargs):  # fmt: skip
        super().__init__(bucket_name=bucket_name, bucket_key=[], wildcard_match=True, **kwargs)
        self.prefix, self.pairs, self.default_pair = prefix, pairs, default_pair
        self.deadline = timedelta(seconds=deadline_seconds)

    def _look(self, context) -> tuple[datetime, list[str]]:
        """The run's window and its configured pairs without a record (one listing); ``bucket_key`` becomes
        the missing pairs' patterns."""
        slot = windows.run_window_start(context.get("data_interval_start"), context["dag_run"].run_after)
        keys = self.hook.list_keys(self.bucket_name, prefix=layout.ingestion_window_prefix(slot, self.prefix))
        there = layout.pairs_listed(keys, slot, self.prefix, self.default_pair)
        missing = [pair for pair in self.pairs if pair not in there]
        self.bucket_key = [layout.record_glob(slot, pair, self.default_pair, self.prefix) for pair in missing]
        return slot, missing

    def _settled(self, slot: datetime, missing: list[str], past_deadline: bool) -> bool:
        """Every pair's record is there, or some are and the deadline has passed (the others are late)."""
        if not missing:
            return True
        if len(missing) == len(self.pairs) or not past_deadline:
            return False
        log.warning("Window %s: going on without %s (no record yet: late)", layout.slot_stamp(slot), missing)
        return True

    def poke(self, context) -> bool:
        slot, missing = self._look(context)
        return self._settled(slot, missing, _now() >= slot + layout.SLOT + self.deadline)

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        dag_run = context["dag_run"]
        slot = windows.run_window_start(context.get("data_interval_start"), dag_run.run_after)
        why = windows.looks_once(dag_run.run_type, slot + layout.SLOT, _now(), self.timeout)
        if why is None:
            return self._wait(context) if self.deferrable else super().execute(context)
        if self._settled(*self._look(context), past_deadline=True):
            return None
        prefix = layout.ingestion_window_prefix(slot, self.prefix)
        raise AirflowSkipException(
            f"no record for window {layout.slot_stamp(slot)}: nothing matches "
            f"s3://{self.bucket_name}/{prefix}* for a pair of the rules ({why}: looked once)"
        )

    def _wait(self, context, missing_before: list[str] | None = None) -> None:
        """Done, or deferred until the missing records are there (all of them: the trigger's keys), or until
        the deadline (some there) or the timeout (none there), whichever comes first."""
        from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger
        from airflow.sdk.exceptions import AirflowSensorTimeout

        slot, missing = self._look(context)
        now, end = _now(), slot + layout.SLOT
        if self._settled(slot, missing, now >= end + self.deadline):
            return None
        if len(missing) < len(self.pairs):
            until, keys = end + self.deadline, self.bucket_key
        else:
            until, keys = end + timedelta(seconds=self.timeout), layout.ingestion_window_prefix(slot, self.prefix) + "*"
            if now >= until:
                raise AirflowSensorTimeout(f"no record of any pair for window {layout.slot_stamp(slot)} "
                                           f"{self.timeout:g} s after it ended")  # fmt: skip
        if missing == missing_before:  # woken by a key outside the grammar: look again later, not at once
            trigger = DateTimeTrigger(min(until, now + SLOW_LOOK))
        else:
            trigger = S3KeyTrigger(
                bucket_name=self.bucket_name, bucket_key=keys, wildcard_match=True, aws_conn_id=self.aws_conn_id,
                region_name=self.region_name, verify=self.verify, botocore_config=self.botocore_config,
                poke_interval=self.poke_interval,
            )  # fmt: skip
        self.defer(trigger=trigger, method_name="resume", kwargs={"missing_before": missing}, timeout=until - now)

    def resume(self, context, event=None, missing_before: list[str] | None = None) -> None:
        if isinstance(event, dict) and event.get("status") == "error":
            raise RuntimeError(event["message"])
        return self._wait(context, missing_before)

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context):
        """A deferral that timed out (the deadline, or the timeout) is one more look, not a failure."""
        from airflow.sdk.exceptions import AirflowSensorTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout:
            return self._wait(context)


def still_normalizing(ti, dag_id: str) -> windows.StillNormalizing:
    """``windows.StillNormalizing`` as the scheduler knows it: of the windows asked about, those with a run
    that can still normalize them (queued or running, its normalize_price_record not finished). A scheduled
    or backfill run's logical date is its window's end; a REST trigger may give the start: both are asked
    (a run of the next window found so is at worst waited for once more)."""

    def those(slots: list[datetime]) -> list[datetime]:
        out = []
        for slot in slots:
            dates = [slot, slot + layout.SLOT]
            runs = ti.get_task_states(dag_id=dag_id, task_ids=[NORMALIZE_TASK], logical_dates=dates)
            if any(
                tasks.get(NORMALIZE_TASK) not in FINISHED_STATES
                and ti.get_dagrun_state(dag_id=dag_id, run_id=run_id) in ACTIVE_RUN_STATES
                for run_id, tasks in runs.items()
            ):
                out.append(slot)
        return out

    return those


def analyse_when_settled(ti, analyse, wait_seconds: int) -> dict:
    """``analyse(still_normalizing=...)`` (``pairs.analyse_pairs`` with its window bound), the one way a
    run waits on earlier windows: while ``windows.WindowNotReady``, up for
    reschedule (the worker slot is freed for the earlier window's tasks); once the task has waited
    ``wait_seconds``, ``analyse()`` with the CSVs there are."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowRescheduleException

    try:
        return analyse(still_normalizing=still_normalizing(ti, ti.dag_id))
    except windows.WindowNotReady as waiting:
        now = pendulum.now("UTC")
        started = ti.get_first_reschedule_date(get_current_context()) or now
        if now - started < timedelta(seconds=wait_seconds):
            log.info("%s (a record there, its run still able to normalize it); looking again shortly", waiting)
            raise AirflowRescheduleException(now + PREVIOUS_WINDOW_POKE) from waiting
        log.warning("%s; waited %s s, analysing with the CSVs there are", waiting, wait_seconds)
    return analyse()


def sns_publisher(config: Config):
    """``publish(alert) -> message id``: one alert (``subject``, ``message``, ``attributes``) to the alert topic."""
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    sns = SnsHook(aws_conn_id=config.aws_conn_id)

    def publish(alert: dict) -> str:
        kwargs = {"subject": alert["subject"], "message_attributes": alert["attributes"]}
        return sns.publish_to_target(config.alert_topic_arn, alert["message"], **kwargs)["MessageId"]

    return publish


def tell_ops(config: Config, subject: str, message: str) -> None:
    """One message on the ops topic."""
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    log.warning("%s", message)
    SnsHook(aws_conn_id=config.aws_conn_id).publish_to_target(
        target_arn=config.ops_topic_arn, subject=subject, message=message
    )


class ClaimsLeftFailure(alerts.ClaimsLeft, AirflowFailException):
    """``alerts.ClaimsLeft`` that fails the task without retries: another try would find the claims again."""


class LiveRunsOpsNotifier(SnsNotifier):
    """The ops topic's failure callback. A backfill run's failures are not paged: whoever ran the backfill
    sees them (``make backfill``'s summary, the UI), so ops hear of live trouble only; but an *Alert claim
    left* (an ``alerts.ClaimsLeft``, by its mark) is paged whatever the run, since only ops can release it
    and an alert may be missing."""

    def __call__(self, *args) -> None:
        # BaseNotifier renders its templates in place: on one shared instance, every failure after the first
        # in a process (dag.test, tests) sent the first one's text. Each failure renders a copy of its own.
        BaseNotifier.__call__(copy.copy(self), *args)

    def notify(self, context) -> None:
        if context["dag_run"].run_type == "backfill" and not getattr(context.get("exception"), "claim_left", False):
            log.info("A backfill run's failure: not paged to ops (make backfill and the UI report it)")
            return
        super().notify(context)


def live_ops_notifier(config: Config) -> LiveRunsOpsNotifier:
    """The live DAGs' failure callback: ``alerts.OPS_SUBJECT`` / ``OPS_MESSAGE`` on the ops topic."""
    return LiveRunsOpsNotifier(aws_conn_id=config.aws_conn_id, target_arn=config.ops_topic_arn,
                               subject=alerts.OPS_SUBJECT, message=alerts.OPS_MESSAGE)  # fmt: skip


def every_window() -> CronDataIntervalTimetable:
    """The live DAGs' schedule: one run per 5-minute window, its data interval the window (a bare cron
    string would give zero-length intervals)."""
    return CronDataIntervalTimetable("*/5 * * * *", timezone="UTC")


# ------------------------------------------------------------------ price_notification's task bodies


def claimant(dag_run) -> str:
    """Who claims a window in the ledger: this DAG run."""
    return f"{dag_run.dag_id}/{dag_run.run_id}"


def window_start(dag_run) -> datetime:
    """The run's window (for templates: ``{{ window_start(dag_run) }}``)."""
    return windows.run_window_start(dag_run.data_interval_start, dag_run.run_after)


def _s3(config: Config):
    return S3Hook(aws_conn_id=config.aws_conn_id).get_conn()


def _run_url(dag_run) -> str:
    from airflow.configuration import conf

    return alerts.run_url(conf.get("api", "base_url"), dag_run.dag_id, dag_run.run_id)


def _due(config: Config, params, dag_run, slot: datetime) -> tuple[bool, str]:
    """Whether the window's breaches may notify subscribers (freshness is about the clock, not about
    what is processed), and if not, why."""
    from include.price_pipeline import analysis

    end = slot + layout.SLOT
    return analysis.due_for_subscribers(
        dag_run.run_type, end, _now(), config.max_alert_age_minutes, params["notify_on_backfill"]
    )


def analyse_pairs(config: Config, rule_set, params, data_interval_start, dag_run, ti) -> list[dict]:
    """Every pair's rules for the window (``pairs.analyse_pairs``), the run's params applied to the default
    pair's rule (``rules.with_overrides``); the due alerts, for the publish."""
    from functools import partial

    from include.price_pipeline import pairs, rules

    slot = windows.run_window_start(data_interval_start, dag_run.run_after)
    if data_interval_start is None:
        log.info("Run without a logical date (triggered for %s): analysing the latest complete window, %s",
                 dag_run.run_after, layout.iso(slot))  # fmt: skip
    due, why_not = _due(config, params, dag_run, slot)
    run_url = _run_url(dag_run)
    analyse = partial(pairs.analyse_pairs, _s3(config), config, rules.with_overrides(rule_set, params), slot, due,
                      why_not, run_url, claimant(dag_run))  # fmt: skip
    try:
        result = analyse_when_settled(ti, analyse, config.previous_window_wait_seconds)
    except (windows.WindowFailed, pairs.DamagedLedger, alerts.UnsafeText) as failure:
        raise AirflowFailException(str(failure)) from None
    stamp = layout.slot_stamp(slot)
    if result["late"]:
        log.warning("Pairs late for window %s: %s", stamp, result["late"])
    if result["late"] and due:  # a live window: ops hear of it (a backfill of old windows only logs it)
        tell_ops(config, f"[price pipeline] Pairs late: {stamp}", pairs.late_notice(slot, result["late"], run_url))
    if result["ops_notice"]:
        tell_ops(config, f"[price pipeline] Alerts not sent: {stamp}", result["ops_notice"])
    return result["alerts"]


def publish_price_alerts(config: Config, due: list[dict], data_interval_start, dag_run) -> dict:
    """Every pair's due alerts of the window (analyse_pairs'), each once, through one SNS publisher
    (``pairs.publish_alerts``): marked started, published, recorded notified; a Publish SNS refused gets
    its mark back for the task's retry. Only this run's claims; a claim an earlier try left started fails
    the task (*Alert claim left*: ops decide)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.price_pipeline import pairs

    if not due:
        raise AirflowSkipException("no alert is due in this window")
    slot = windows.run_window_start(data_interval_start, dag_run.run_after)
    result = pairs.publish_alerts(_s3(config), config, slot, due, claimant(dag_run), sns_publisher(config))
    for reason in result["skipped"]:
        log.warning("%s", reason)
    log.info("Published %d alerts: %s", len(result["sent"]), result["sent"])
    if result["failed"]:  # not sent: the task's retry publishes them (and reports any left again)
        raise (alerts.ClaimsLeft if result["left"] else RuntimeError)("; ".join(result["failed"] + result["left"]))
    if result["left"]:
        raise ClaimsLeftFailure("; ".join(result["left"]))
    sent = [alert for alert in due if f"{alert['pair']} {alert['rule']}" in result["sent"]]
    return {"sent": result["sent"], "slack": [alerts.slack_text(a["subject"], a["message"]) for a in sent]}


def post_slack_alerts(config: Config, published: dict | None) -> None:
    """The alerts SNS accepted, in one Slack message (one webhook call: a retry repeats one message)."""
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    from airflow.sdk.exceptions import AirflowSkipException

    if not published or not published["slack"]:
        raise AirflowSkipException("no alert was sent")
    SlackWebhookHook(slack_webhook_conn_id=config.slack_conn_id).send_text("\n\n".join(published["slack"]))


# ------------------------------------------------------------------ price_history_backfill's task bodies


def analyse_price_history(config: Config, rule_set, params, dag_run) -> dict:
    """The range's windows of every pair, by the run's rules (``history.backfill_history``)."""

    from include.price_pipeline import history, rules

    try:
        start, end = (history.parse_window_start(params[name]) for name in ("start", "end"))
        notify = params["notify_on_backfill"]
        return history.backfill_history(
            _s3(config), config, start, end, rules.with_overrides(rule_set, params), notify, pendulum.now("UTC"),
            sns_publisher(config) if notify else None, _run_url(dag_run), claimant=claimant(dag_run),
        )  # fmt: skip
    except alerts.ClaimsLeft as failure:
        raise ClaimsLeftFailure(str(failure)) from None
    except (history.NoUsableWindow, alerts.UnsafeText) as failure:
        raise AirflowFailException(str(failure)) from None


def report_quarantine(config: Config, summary: dict, dag_run) -> None:
    """Ops' one message of a range with quarantined objects (``history.report_quarantine``), if any."""
    from include.price_pipeline import history

    report = history.report_quarantine(_s3(config), config, summary, _run_url(dag_run))
    if report is not None:
        tell_ops(config, *report)


# ------------------------------------------------------------------ the exchange feed's task bodies


class FeedFailed(Exception):
    """A pair's candles could not be had for a reason another try may not meet (the exchange unreachable or
    rate-limiting, S3 refusing): one line per pair, naming its exchange. Airflow retries the task (the pairs
    written meanwhile are not asked again) and pages ops once, after the last try. A refusal or a malformed
    answer fails the task at once (AirflowFailException): another try would only ask the same."""


def fetch_exchange_candles(config: Config, rule_set, data_interval_start, dag_run) -> dict:
    """price_exchange_feed's task: every pair's candle of the run's window from its exchange, written once
    where the pair has no record yet. A pair whose candle could not be had fails the task after the other
    pairs' were written, with one line per pair (ops: *Feed problem*, once)."""
    from include.price_pipeline import exchange

    slot = windows.run_window_start(data_interval_start, dag_run.run_after)
    done = exchange.write_candles(_s3(config), config, rule_set, slot, slot + layout.SLOT, _now())
    return _fetched(done, f"window {slot:%Y-%m-%d %H:%M} UTC", missing_is_a_problem=True)


def fetch_exchange_history(config: Config, rule_set, params) -> dict:
    """price_history_backfill's first task, when ``fetch_from_exchange``: the range's closed candles of every
    pair that has no record yet, fetched in pages and written once (``exchange.write_candles``)."""
    from include.price_pipeline import exchange, history

    if not params["fetch_from_exchange"]:
        log.info("fetch_from_exchange is off: the range's records are those producers wrote")
        return {}
    start, end = (history.parse_window_start(params[name]) for name in ("start", "end"))
    start, end = exchange.closed_range(start, end, _now())
    done = exchange.write_candles(_s3(config), config, rule_set, start, end, _now())
    return _fetched(done, f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", missing_is_a_problem=False)


def _fetched(done: dict, what: str, missing_is_a_problem: bool) -> dict:
    """Log each pair's fetch; fail with the problems (one line per pair, naming its exchange)."""
    problems = []
    for pair, fetched in done.items():
        log.info("%s, %s: %s", pair, what, fetched.summary())
        problems += fetched.problems
        if missing_is_a_problem and fetched.not_served:
            problems.append(f"{fetched.exchange} {pair}: the exchange served no candle for {what}")
    if problems:
        failure = FeedFailed if any(fetched.passing for fetched in done.values()) else AirflowFailException
        raise failure(f"Feed problem, {what}: " + "; ".join(problems))
    return {pair: fetched.summary() for pair, fetched in done.items()}
