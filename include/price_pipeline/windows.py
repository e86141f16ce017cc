"""A window's place in time, for every pair: which window a run owns, whether its run waits for its records,
and the one rule for waiting on earlier windows whose normalization is still under way (no Airflow here).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from include.price_pipeline import layout, store
from include.price_pipeline.settings import Config

#: ``still_normalizing(windows)``: those of ``windows`` whose normalization a run can still finish.
StillNormalizing = Callable[[list[datetime]], list[datetime]]


class WindowFailed(Exception):
    """The window cannot be analysed and a retry will not change that (the message says why)."""


class WindowNotReady(Exception):
    """An earlier window this one is compared with has a raw record whose normalization is still
    under way (a parallel backfill, a slow or retried Glue run): analysing now would compare with an
    older price. Try again shortly (the message names the windows, ``windows`` lists them)."""

    def __init__(self, slot: datetime, waiting: list[datetime]):
        self.windows = waiting
        stamps = ", ".join(layout.slot_stamp(s) for s in waiting)
        super().__init__(f"window {layout.slot_stamp(slot)} waits for the normalization of {stamps}")


def run_window_start(data_interval_start: datetime | None, run_after: datetime) -> datetime:
    """The window a run analyses: its data interval, or for a run without a logical date (REST or CLI
    trigger with none) the latest window complete when it was due to run. A plain ``datetime``: Airflow's
    pendulum times make intervals that a ``timedelta`` cannot divide (a cooldown's checkpoint does)."""
    if data_interval_start is not None:
        return layout.slot_start(data_interval_start)
    return layout.slot_start(run_after) - layout.SLOT


def looks_once(run_type: str, window_end: datetime, now: datetime, sensor_timeout_seconds: float) -> str | None:
    """Why the run of a window whose record should already be there looks for it once instead of waiting
    (a backfill run, or a window that ended longer ago than the sensor timeout); None for a live window,
    whose run waits for its record up to the sensor timeout."""
    if run_type == "backfill":
        return "a backfill run"
    if now - window_end > timedelta(seconds=sensor_timeout_seconds):
        return f"the window ended more than the sensor timeout ({sensor_timeout_seconds:g} s) ago"
    return None


def wait_for_earlier_windows(
    s3, config: Config, slot: datetime, gaps: list[datetime], still_normalizing: StillNormalizing | None
) -> None:
    """The one rule for waiting on earlier windows: of the windows ``gaps`` a decision of ``slot`` finds no
    canonical price in, raise WindowNotReady naming those with a raw record (any pair's) whose normalization a
    run can still finish (``still_normalizing``): a missing record holds nobody."""
    if still_normalizing is None or not gaps:
        return
    pending = sorted({slot for slot, _ in store.records_present(s3, config.bucket, config.ingestion_prefix, gaps)})
    waiting = still_normalizing(pending) if pending else []
    if waiting:
        raise WindowNotReady(slot, waiting)
