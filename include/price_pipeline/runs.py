"""What the price DAGs' tasks ask Airflow: the one module of ``include/`` that imports it (the others are
plain functions that never do).

- ``WindowRecordSensor``: a live window's run waits for its record; a past window's run looks once.
- ``still_normalizing`` / ``analyse_when_settled``: the scheduler's side of the one rule for waiting on
  earlier windows (``windows.wait_for_earlier_windows``), the same for every pair.
- ``LiveRunsOpsNotifier``: failures page ops for live runs; a backfill's failed windows go to whoever ran it.
"""

from __future__ import annotations

import copy
import logging
from datetime import datetime, timedelta

import pendulum
from airflow.providers.amazon.aws.notifications.sns import SnsNotifier
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import BaseNotifier

from include.price_pipeline import layout, windows
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


class WindowRecordSensor(S3KeySensor):
    """The S3KeySensor of a window's record. A live window's run waits for it as S3KeySensor does (deferred,
    up to ``timeout``); a run whose record should already be there (``windows.looks_once``: a backfill
    run, a window that ended longer ago than the timeout) lists once and, with nothing there, is skipped
    with a one-line reason naming the window and what it listed: a missing record, not a pipeline error,
    and no page."""

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        dag_run = context["dag_run"]
        slot = windows.run_window_start(context.get("data_interval_start"), dag_run.run_after)
        why = windows.looks_once(dag_run.run_type, slot + layout.SLOT, pendulum.now("UTC"), self.timeout)
        if why is None:
            return super().execute(context)
        if self.poke(context):
            return None
        raise AirflowSkipException(
            f"no record for window {layout.slot_stamp(slot)}: nothing matches "
            f"s3://{self.bucket_name}/{self.bucket_key} ({why}: looked once)"
        )


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
    """``analyse(still_normalizing=...)`` (``windows.analyse_window`` or ``pairs.analyse_pairs`` with their
    window bound), the one way both lanes wait on earlier windows: while ``windows.WindowNotReady``, up for
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


def tell_ops(config: Config, subject: str, message: str) -> None:
    """One message on the ops topic."""
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    log.warning("%s", message)
    SnsHook(aws_conn_id=config.aws_conn_id).publish_to_target(
        target_arn=config.ops_topic_arn, subject=subject, message=message
    )


class LiveRunsOpsNotifier(SnsNotifier):
    """The ops topic's failure callback. A backfill run's failures are not paged: whoever ran the backfill
    sees them (``make backfill``'s summary, the UI), so ops hear of live trouble only; but an *Alert claim
    left* (``alerts.OPS_SUBJECT``'s rule: a claim named in the exception) is paged whatever the run, since
    only ops can release it and an alert may be missing."""

    def __call__(self, *args) -> None:
        # BaseNotifier renders its templates in place: on one shared instance, every failure after the first
        # in a process (dag.test, tests) sent the first one's text. Each failure renders a copy of its own.
        BaseNotifier.__call__(copy.copy(self), *args)

    def notify(self, context) -> None:
        if context["dag_run"].run_type == "backfill" and "claim" not in str(context.get("exception", "")):
            log.info("A backfill run's failure: not paged to ops (make backfill and the UI report it)")
            return
        super().notify(context)
