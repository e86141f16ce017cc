"""The local stack's REST API as the UI uses it: logged in as the ``make run`` admin, backfills created
with ``POST /api/v2/backfills`` (what the UI's backfill dialog sends), and their progress.

Used by ``make backfill`` (local/backfill.py), ``make run``'s history backfill, ``make soak`` and the
scheduler-level tests.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from local.stack import ADMIN_USER, Stack

DAG_ID = "price_notification"


class ApiError(RuntimeError):
    """A REST call answered with a status >= 300; ``reason`` is Airflow's one-line ``detail``."""

    def __init__(self, method: str, path: str, status: int, reason: str):
        super().__init__(f"{method} {path}: {status} {reason}")
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Progress:
    """Windows of one backfill: succeeded with a record (``done``), failed, ended without a record (the
    sensor looked once: skipped), waiting for their record or for an earlier window's normalization, and
    in all."""

    backfill_id: int
    done: int
    failed: int
    no_record: int
    waiting_for_record: int
    waiting_for_earlier: int
    total: int
    completed: bool  # the scheduler marked the backfill complete

    def line(self) -> str:
        state = ", complete" if self.completed else ""
        return (
            f"backfill {self.backfill_id}: {self.done} done, {self.failed} failed, {self.no_record} no record, "
            f"waiting {self.waiting_for_record} for a record and {self.waiting_for_earlier} for an earlier window, "
            f"{self.total} windows{state}"
        )


#: A backfill's runs: state, window, the sensor's state, whether an analysis waits for an earlier window.
RUNS_SQL = """
SELECT r.run_id, r.state, r.data_interval_start,
       max(CASE WHEN t.task_id = %s THEN t.state END),
       coalesce(bool_or(t.task_id IN %s AND t.state = 'up_for_reschedule'), false)
FROM backfill_dag_run b JOIN dag_run r ON r.id = b.dag_run_id
LEFT JOIN task_instance t ON t.dag_id = r.dag_id AND t.run_id = r.run_id
WHERE b.backfill_id = %s GROUP BY r.run_id, r.state, r.data_interval_start ORDER BY r.data_interval_start
"""
SENSOR_TASK = "wait_for_price_record"
ANALYSIS_TASKS = ("analyse_pairs",)


class Api:
    """The stack's REST API, logged in as its admin: no CLI start-up (seconds on a busy machine) per call."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.port = stack.api_port
        self.token = None
        login = {"username": ADMIN_USER, "password": stack.admin_password()}
        self.token = self.call("POST", "/auth/token", login)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON request; raises ApiError with Airflow's reason on a status >= 300."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status >= 300:
            raise ApiError(method, path, response.status, _reason(data))
        return json.loads(data or b"{}")

    def backfills(self, dag_id: str = DAG_ID) -> list[dict]:
        """Every backfill of ``dag_id``, as the UI's Backfills tab lists them."""
        return self.call("GET", f"/api/v2/backfills?dag_id={dag_id}&limit=1000")["backfills"]

    def running_backfill(self, dag_id: str = DAG_ID) -> dict | None:
        """The DAG's backfill the scheduler has not completed yet (Airflow runs one per DAG), or None."""
        return next((b for b in self.backfills(dag_id) if b["completed_at"] is None), None)

    def create_backfill(
        self, first: datetime, last: datetime, notify: bool, max_active_runs: int = 16, dag_id: str = DAG_ID
    ) -> dict:
        """A backfill over window starts ``[first, last]`` (completed windows run again; notified ones
        never notify twice: the ledger decides)."""
        body = {
            "dag_id": dag_id,
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
            "dag_run_conf": {"notify_on_backfill": notify},
            "reprocess_behavior": "completed",
            "max_active_runs": max_active_runs,
        }
        return self.call("POST", "/api/v2/backfills", body)

    def task_reason(self, run_id: str, task_id: str, dag_id: str = DAG_ID) -> str:
        """Why a task of a run ended as it did, on one line, from its last try's log: the reason it was
        skipped with, or the error it failed with."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        try_number = self.call("GET", path)["try_number"]
        events = self.call("GET", f"{path}/logs/{try_number}?full_content=true")["content"]
        return log_reason(events) or f"(no reason in the log of {task_id}, try {try_number})"

    def backfill_ui_url(self, dag_id: str = DAG_ID) -> str:
        return f"{self.stack.ui_url}/dags/{dag_id}/backfills"


def backfill_runs(stack: Stack, backfill: dict) -> list[tuple]:
    """(run_id, run state, window start, sensor state, waiting for an earlier window) of every run of the
    backfill, by window: the rows the UI's grid shows."""
    return stack.query(RUNS_SQL, SENSOR_TASK, ANALYSIS_TASKS, backfill["id"])


def progress(stack: Stack, backfill: dict) -> Progress:
    """The backfill's windows by what they are doing, from the metadata database."""
    runs = backfill_runs(stack, backfill)
    ended = [(state, sensor) for _, state, _, sensor, _ in runs]
    waiting = ("deferred", "up_for_reschedule")
    [(completed,)] = stack.query("SELECT completed_at IS NOT NULL FROM backfill WHERE id = %s", backfill["id"])
    return Progress(
        backfill["id"],
        done=ended.count(("success", "success")),
        failed=sum(state == "failed" for state, _ in ended),
        no_record=ended.count(("success", "skipped")),
        waiting_for_record=sum(state == "running" and sensor in waiting for state, sensor in ended),
        waiting_for_earlier=sum(state == "running" and earlier for _, state, _, _, earlier in runs),
        total=len(runs),
        completed=completed,
    )


def wait_for_backfill(
    stack: Stack, backfill: dict, timeout: float = 4 * 3600, report=print, every: float = 3.0, at_least: float = 30.0
) -> Progress:
    """Poll until the scheduler completes the backfill; ``report`` gets a progress line whenever it changes
    and at least every ``at_least`` seconds."""
    deadline, last, said = time.monotonic() + timeout, None, 0.0
    while True:
        now = progress(stack, backfill)
        if now != last or time.monotonic() - said >= at_least:
            report(now.line())
            last, said = now, time.monotonic()
        if now.completed:
            return now
        for name in stack.processes:
            stack._check_alive(name)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{now.line()}: not complete after {timeout:.0f}s")
        time.sleep(every)


def unfinished_windows(api: Api, backfill: dict) -> list[tuple[datetime, str, str]]:
    """(window start, ``failed`` or ``no record``, the reason its task gave) of each window of the
    backfill that did not succeed with a record, by window: the reason is read from the task's log (the
    sensor's skip reason, or the first failed task's error), as the UI's log view shows it."""
    out = []
    for run_id, state, window, sensor, _ in backfill_runs(api.stack, backfill):
        if state == "success" and sensor == "skipped":
            out.append((window, "no record", api.task_reason(run_id, SENSOR_TASK)))
        elif state == "failed":
            failed = api.stack.query(
                "SELECT task_id FROM task_instance WHERE dag_id = %s AND run_id = %s AND state = 'failed' "
                "ORDER BY end_date LIMIT 1",
                DAG_ID,
                run_id,
            )
            reason = api.task_reason(run_id, failed[0][0]) if failed else "the run failed before any task ran"
            out.append((window, "failed", reason))
    return out


def log_reason(events: list) -> str | None:
    """The reason a task's structured log gives for how it ended: the skip's reason, else the last
    error's message (``error_detail``: the exception raised, then its causes), else the last error line."""
    reason = None
    for event in events:
        if not isinstance(event, dict):
            continue
        if event.get("event") == "Skipping task." and event.get("reason"):
            reason = str(event["reason"])
        elif event.get("level") == "error":
            detail = event.get("error_detail") or []
            raised = detail[0] if detail and isinstance(detail[0], dict) else {}
            message = f"{raised.get('exc_type', '')}: {raised.get('exc_value', '')}" if raised else event.get("event")
            reason = message or reason
    return " ".join(reason.split()) if reason else None


def _reason(data: bytes) -> str:
    """Airflow's ``detail`` on one line (validation errors are a list of messages)."""
    try:
        detail = json.loads(data).get("detail", data.decode(errors="replace"))
    except (ValueError, AttributeError):
        detail = data.decode(errors="replace")
    if isinstance(detail, list):
        detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return " ".join(str(detail).split())[:500]


def backfill_when_free(
    stack: Stack, api: Api, first: datetime, last: datetime, notify: bool, max_active_runs: int = 16, report=print
) -> dict:
    """Create a backfill once the DAG's running backfill, if any, has completed (Airflow runs one
    backfill per DAG at a time and refuses a second with 409)."""
    running = api.running_backfill()
    if running is not None:
        report(f"backfill {running['id']} of {running['dag_id']} is running (one per DAG at a time); waiting for it")
        wait_for_backfill(stack, running, report=report)
    return api.create_backfill(first, last, notify=notify, max_active_runs=max_active_runs)
