"""What the price DAGs declare, as Airflow classes: the providers' operators subclassed where the pipeline
needs more, and the failure callback. The task bodies are ``runs``; the plain modules of ``include/`` import
neither.
"""

from __future__ import annotations

import copy
import logging
import time
from datetime import UTC, datetime, timedelta

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.operators.glue import GlueJobOperator
from airflow.providers.amazon.aws.operators.sns import SnsPublishOperator
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import BaseNotifier, CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowFailException

from include.price_pipeline import alerts, layout, store, windows
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)
#: How soon the sensor looks again after a wake-up that found no new pair (a key outside the grammar
#: matched the trigger's pattern): later than the poke interval, so such a key is no busy loop.
SLOW_LOOK = timedelta(seconds=30)


def _now() -> datetime:
    """A plain ``datetime``: a pendulum one makes pendulum intervals, which a deferral's timeout cannot
    carry to the supervisor (msgpack refuses them: the task failed instead of deferring)."""
    return datetime.now(UTC)


class WindowRecordSensor(S3KeySensor):
    """The provider's S3KeySensor on a window's records, one per configured pair, deferred to S3KeyTrigger on
    the missing pairs' patterns between looks. A look is one listing of the window's prefix read by the key
    grammar; it is done when every pair's record is there, or some are and the window ended
    ``deadline_seconds`` ago (the rest are *late*), and fails with none ``timeout`` seconds after the window
    ended. A run whose records should already be there (``windows.looks_once``) looks once, and with none
    there is skipped with a one-line reason. ``default_pair``: the pair the legacy alias is read as.
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
        there = {pair for _, pair in store.records_present(self.hook.get_conn(), self.bucket_name, self.prefix, [slot],
                                                           self.default_pair)}  # fmt: skip
        missing = [pair for pair in self.pairs if pair not in there]
        self.bucket_key = [layout.record_glob(slot, pair, self.prefix) for pair in missing]
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


class _RunEnded(Exception):  # noqa: N818 - not an error: the run ended before the deferral
    def __init__(self, run_id: str, state: str):
        self.run_id, self.state = run_id, state


class WindowGlueJobOperator(GlueJobOperator):
    """The provider's GlueJobOperator, deferred as it is, but for a run that ends within ``SHORT_RUN``
    seconds of its start: that one is watched to its end on the worker, since a deferral costs a second
    task start (1.5-2 s; the local stand-in's runs of one window last under a second, of a day's range about
    3 s). A Python shell run on AWS takes longer than that to start and is deferred as before, ``SHORT_RUN``
    later. Both DAGs' Glue tasks are one."""

    SHORT_RUN = 3.0

    def execute(self, context):
        try:
            return super().execute(context)
        except _RunEnded as ended:
            if self.verbose:
                self.hook.print_job_logs(self.job_name, ended.run_id, self.hook.LogContinuationTokens())
            status = "success" if ended.state == "SUCCEEDED" else "error"
            return self.execute_complete(context, {"status": status, "run_id": ended.run_id, "state": ended.state})

    def defer(self, *, trigger, **kwargs) -> None:
        until = time.monotonic() + self.SHORT_RUN
        while time.monotonic() < until:
            state = self.hook.get_job_state(self.job_name, trigger.run_id)
            if state in ("SUCCEEDED", "FAILED", "STOPPED", "TIMEOUT", "ERROR"):
                raise _RunEnded(trigger.run_id, state)
            time.sleep(0.25)
        super().defer(trigger=trigger, **kwargs)


class ClaimsLeftFailure(alerts.ClaimsLeft, AirflowFailException):
    """``alerts.ClaimsLeft`` that fails the task without retries: another try would find the claims again."""


def claimant(dag_run) -> str:
    """Who claims a window in the ledger: this DAG run."""
    return f"{dag_run.dag_id}/{dag_run.run_id}"


class AlertPublishOperator(SnsPublishOperator):
    """The provider's SnsPublishOperator for one due alert of the run's window, mapped over analyse_pairs'
    alerts (``expand_kwargs``), with the ledger around its Publish (``ledger.publish_alerts`` of this one
    alert), so each (pair, rule, window) goes out at most once (README "Alerts, ledger and at-most-once").
    """

    def __init__(self, *, pair: str, rule: str, **kwargs):
        super().__init__(**kwargs)
        self.pair, self.rule = pair, rule

    def execute(self, context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.price_pipeline import ledger, settings

        dag_run = context["dag_run"]
        slot = windows.run_window_start(context.get("data_interval_start"), dag_run.run_after)
        s3 = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).get_conn()

        def publish(_alert: dict) -> str:
            return SnsPublishOperator.execute(self, context)["MessageId"]

        alert = {"pair": self.pair, "rule": self.rule}
        result = ledger.publish_alerts(s3, settings.load(), slot, [alert], claimant(dag_run), publish)
        if result["sent"]:
            [message_id] = result["sent"].values()
            log.info("Published as SNS message %s", message_id)
            return {**alert, "sns_message_id": message_id}
        if result["failed"]:  # not sent: the retry publishes it
            raise RuntimeError(result["failed"][0])
        if result["left"]:
            raise ClaimsLeftFailure(result["left"][0])
        raise AirflowSkipException(result["skipped"][0])


class LiveRunsOpsNotifier(BaseNotifier):
    """The live DAGs' failure callback: the failed task's last try is an ops incident (``incidents``): opened
    (paged ``alerts.OPS_MESSAGE``, rendered) by the first failing window, counted by the next ones, reminded
    while it lasts. A backfill run's failures go to whoever ran it, not to ops, except an *Alert claim left*
    (``alerts.ClaimsLeft``): only ops can release it, and an alert may be missing; it is paged, no incident."""

    template_fields = ("message",)

    def __init__(self, config: Config, message: str):
        super().__init__()
        self.config, self.message = config, message

    def __call__(self, *args) -> None:
        # BaseNotifier renders its templates in place: on one shared instance, every failure after the first
        # in a process (dag.test, tests) sent the first one's text. Each failure renders a copy of its own.
        BaseNotifier.__call__(copy.copy(self), *args)

    def notify(self, context) -> None:
        from include.price_pipeline import incidents, runs

        exception, dag_run = context.get("exception"), context["dag_run"]
        window = windows.run_window_start(context.get("data_interval_start"), dag_run.run_after)
        failures = incidents.failures_of(context["dag"].dag_id, context["ti"].task_id, exception, self.message)
        if dag_run.run_type == "backfill":
            if getattr(exception, "claim_left", False):
                runs.tell_ops(self.config, *incidents.opening(failures, window))
            else:
                log.info("A backfill run's failure: not paged to ops (make backfill and the UI report it)")
            return
        runs.observe_incidents(self.config, incidents.Observation(window, failures=tuple(failures)), context["ti"])


def heal_incidents(config: Config):
    """The live DAGs' success callback: a task's success heals the incidents its failures opened
    (``incidents``), in a window after their last failing one. One read of the state; a write only to resolve.
    A mapped task heals through its first instance: a hundred alerts' publishes are one read, not a hundred."""

    def heal(context) -> None:
        from include.price_pipeline import incidents, runs

        dag_run = context["dag_run"]
        if dag_run.run_type == "backfill" or context["ti"].map_index > 0:
            return
        window = windows.run_window_start(context.get("data_interval_start"), dag_run.run_after)
        healer = incidents.task_healer(context["dag"].dag_id, context["ti"].task_id)
        runs.observe_incidents(config, incidents.Observation(window, healthy_task=healer), context["ti"])

    return heal


def incident_callbacks(config: Config) -> dict:
    """The live DAGs' task callbacks: a failure opens or counts an incident (``LiveRunsOpsNotifier``), a
    success heals the incidents the task's failures opened (``heal_incidents``)."""
    return {"on_failure_callback": LiveRunsOpsNotifier(config, alerts.OPS_MESSAGE),
            "on_success_callback": heal_incidents(config)}  # fmt: skip


def every_window() -> CronDataIntervalTimetable:
    """The live DAGs' schedule: one run per 5-minute window, its data interval the window (a bare cron
    string would give zero-length intervals)."""
    return CronDataIntervalTimetable("*/5 * * * *", timezone="UTC")
