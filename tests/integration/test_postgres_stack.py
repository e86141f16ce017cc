"""The stack of ``make run`` on its PostgreSQL metadata database: started exactly as ``make run``
starts it (local/run.py ``start``: stand-in, PostgreSQL, Airflow, feed, history backfill) on free
ports in a temporary folder.

What SQLite could not do: simultaneous REST writes during start-up, backfills created while the
scheduler runs. Also: ``make backfill`` end to end, the files a login depends on private from their
creation, nothing left running after a stop, and a server left by a killed run cleaned up.
"""

from __future__ import annotations

import contextlib
import re
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from include.price_pipeline import layout
from local import run
from local.api import Api
from local.postgres import Postgres
from local.stack import isolated
from tests.conftest import make_backfill

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
#: make run's history backfill, shorter than its hour: each window is a native run of every task (CPU the
#: suite's other stacks share); what is checked is that it is created, listed and waited for.
HISTORY_WINDOWS = 3

DAG_ID = "price_notification"


@pytest.fixture(scope="module")
def stack(stack_dir):
    stack = isolated(stack_dir)
    try:
        stack.history = run.start(stack, log=lambda *args, **kwargs: None, history_windows=HISTORY_WINDOWS)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack)


def test_four_simultaneous_ui_triggers_during_start_up_all_succeed(stack, api):
    """What the UI's Trigger button sends, four times at once, while the history backfill starts."""
    now = datetime.now(UTC).replace(microsecond=0)

    def trigger(n: int) -> dict:
        body = {"logical_date": (now - timedelta(seconds=n)).isoformat(), "conf": {}}
        return api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", body)

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(trigger, range(4)))

    assert len({r["dag_run_id"] for r in runs}) == 4
    assert all(r["state"] == "queued" for r in runs), runs


def test_the_startup_history_backfill_is_listed_where_the_ui_reads_backfills(stack, api):
    assert stack.history is not None, "make run did not create its history backfill"
    listed = {b["id"]: b for b in api.backfills()}

    assert stack.history["id"] in listed
    assert listed[stack.history["id"]]["dag_id"] == DAG_ID


def test_make_backfill_runs_distinct_ranges_in_a_row_each_complete_with_the_scheduler_running(stack, monkeypatch):
    """Three ranges of the feed's past hour (the first waits for make run's history backfill)."""
    latest = layout.slot_start(datetime.now(UTC)) - 3 * layout.SLOT
    stamp = "%Y-%m-%dT%H:%M"
    for n in range(3):
        last = latest - 2 * n * layout.SLOT
        first = last - layout.SLOT
        code, out = make_backfill(stack, monkeypatch, "--from", first.strftime(stamp), "--to", last.strftime(stamp))

        assert code == 0, out
        assert re.search(r"Backfill \d+ created", out), out
        assert f"{stack.ui_url}/dags/{DAG_ID}/backfills" in out
        assert re.search(r"Backfill \d+: 2 of 2 windows succeeded", out), out


def test_make_backfill_prints_airflows_reason_and_fails_when_the_backfill_is_refused(stack, monkeypatch):
    code, out = make_backfill(stack, monkeypatch, "--from", "2026-01-02T00:00", "--to", "2026-01-01T00:00")

    assert code == 1
    [line] = [line for line in out.splitlines() if line.startswith("Airflow refused the backfill: ")]
    assert len(line) > len("Airflow refused the backfill: ")


def test_a_refused_history_backfill_is_reported_with_airflows_reason(stack, api):
    """Airflow runs one backfill per DAG: make run says why it could not create its own."""
    said = []
    running = api.create_backfill(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC), False)
    try:
        assert run.backfill_history(api, log=lambda line, **_: said.append(line)) is None
    finally:
        api.call("PUT", f"/api/v2/backfills/{running['id']}/cancel")

    [line] = said
    assert "was not created: There is already a running backfill" in line


def test_login_files_and_the_database_are_private_from_creation(stack):
    assert stat.S_IMODE(stack.passwords_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.home / "jwt_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.state_dir / "aws-standin-credentials.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.postgres.data_dir.stat().st_mode) == 0o700
    assert not list((stack.home).glob("*.db")), "no SQLite file"


def test_stop_leaves_nothing_running_and_the_api_server_answered_no_request_with_500(stack):
    """Last in the module: it stops the stack."""
    pids = set()
    for process in stack.processes.values():
        root = psutil.Process(process.pid)
        pids |= {root.pid, *(child.pid for child in root.children(recursive=True))}

    stack.stop()

    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert stack.postgres.running_pid() is None
    access = (stack.logs / "api-server.log").read_text(errors="replace")
    assert "status_code=200" in access, "the api-server logs its requests"
    assert not re.findall(r".*status_code=5\d\d.*", access)


def test_a_server_left_running_by_a_killed_run_is_stopped_before_a_new_start(stack_dir):
    postgres = Postgres(stack_dir / "leftover")
    postgres.prepare()
    leftover = subprocess.Popen(postgres.argv(), start_new_session=True, **postgres.identity())
    try:
        postgres.wait_ready(lambda: None)
        assert postgres.running_pid() == leftover.pid

        said = []
        postgres.prepare(log=said.append)

        assert leftover.wait(timeout=30) == 0  # a clean fast shutdown
        assert postgres.running_pid() is None
        assert said == [f"Stopping a PostgreSQL server (pid {leftover.pid}) left running on {postgres.data_dir} "
                        "by an earlier run"]  # fmt: skip
    finally:
        leftover.kill()


def running_command(process: psutil.Process) -> str | None:
    """The command line of a process still running; None for one gone or a zombie (a short-lived child, such
    as a DAG file's parse, may end between the listing and the look)."""
    try:
        return None if process.status() == psutil.STATUS_ZOMBIE else " ".join(process.cmdline())
    except psutil.Error:
        return None


def test_a_hangup_of_make_run_stops_every_process_it_started():
    """Closing the terminal sends SIGHUP: it must clean up as Ctrl-C does, or the stand-in, PostgreSQL,
    Airflow and the feed (each in its own session, out of the terminal's reach) keep running."""
    import os
    import shutil
    import signal
    import sys
    import tempfile
    from pathlib import Path

    from local.stack import ROOT, free_port

    state_dir = Path(tempfile.mkdtemp(prefix="price-stack-"))  # reachable by the database's user (stack_dir)
    env = {
        **os.environ,
        "STATE_DIR": str(state_dir),
        "STANDIN_PORT": str(free_port()),
        "AIRFLOW_PORT": str(free_port()),
    }
    output = state_dir / "make-run.out"
    with open(output, "wb") as out:
        make_run = subprocess.Popen([sys.executable, "-m", "local.run"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while "Waiting for notifications" not in output.read_text(errors="replace"):
            assert make_run.poll() is None, output.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "make run did not start within 10 minutes"
            time.sleep(1)
        started = psutil.Process(make_run.pid).children(recursive=True)
        commands = " ".join(filter(None, map(running_command, started)))
        assert all(name in commands for name in ("local.standin", "postgres", "scheduler", "local.feed")), commands

        make_run.send_signal(signal.SIGHUP)

        assert make_run.wait(timeout=180) == 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert list(filter(None, map(running_command, alive))) == []
    finally:
        make_run.kill()
        for process in started:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(state_dir / "postgres", ignore_errors=True)
