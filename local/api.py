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

from local.stack import ADMIN_USER, Stack

DAG_ID = "price_notification"


class ApiError(RuntimeError):
    """A REST call answered with a status >= 300; ``reason`` is Airflow's one-line ``detail``."""

    def __init__(self, method: str, path: str, status: int, reason: str):
        super().__init__(f"{method} {path}: {status} {reason}")
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Progress:
    """Windows of one backfill: finished successfully, failed, and in all."""

    backfill_id: int
    done: int
    failed: int
    total: int
    completed: bool  # the scheduler marked the backfill complete

    def line(self) -> str:
        state = ", complete" if self.completed else ""
        return f"backfill {self.backfill_id}: {self.done} done, {self.failed} failed, {self.total} windows{state}"


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

    def backfill_ui_url(self, dag_id: str = DAG_ID) -> str:
        return f"{self.stack.ui_url}/dags/{dag_id}/backfills"


def progress(stack: Stack, backfill: dict) -> Progress:
    """The backfill's windows by state, from the metadata database (the rows the UI's grid shows)."""
    rows = stack.query(
        "SELECT r.state, count(*) FROM backfill_dag_run b JOIN dag_run r ON r.id = b.dag_run_id"
        " WHERE b.backfill_id = %s GROUP BY r.state",
        backfill["id"],
    )
    states = dict(rows)
    [(completed,)] = stack.query("SELECT completed_at IS NOT NULL FROM backfill WHERE id = %s", backfill["id"])
    return Progress(backfill["id"], states.get("success", 0), states.get("failed", 0), sum(states.values()), completed)


def wait_for_backfill(
    stack: Stack, backfill: dict, timeout: float = 4 * 3600, report=print, every: float = 3.0
) -> Progress:
    """Poll until the scheduler completes the backfill; ``report`` gets a progress line whenever it changes."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        now = progress(stack, backfill)
        if now != last:
            report(now.line())
            last = now
        if now.completed:
            return now
        for name in stack.processes:
            stack._check_alive(name)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{now.line()}: not complete after {timeout:.0f}s")
        time.sleep(every)


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
