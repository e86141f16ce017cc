"""The local stack as processes: the AWS stand-in and Airflow's scheduler, dag-processor, triggerer
and api-server, each in its own session so each can be stopped by PID with nothing left behind.

Used by ``make run`` (local/run.py), ``make backfill``, the benchmarks and the scheduler-level tests.
Everything lives under one state folder (default ``.local/``): AIRFLOW_HOME with its SQLite
database, and one log file per process in ``logs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
ADMIN_USER = "admin"
SQLITE_CONNECT_ARGS = {"timeout": 60}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass
class Stack:
    """Start, query and stop the local processes. Ports bind to 127.0.0.1 only."""

    state_dir: Path = ROOT / ".local"
    standin_port: int = 4566
    api_port: int = 8080
    extra_env: dict[str, str] = field(default_factory=dict)
    standin_args: tuple[str, ...] = ()
    worker_log_port: int = 0  # 0: Airflow's 8793/8794 for the default stack, free ports for any other
    trigger_log_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        default = self.api_port == 8080
        self.worker_log_port = self.worker_log_port or (8793 if default else free_port())
        self.trigger_log_port = self.trigger_log_port or (8794 if default else free_port())

    @property
    def home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def standin_url(self) -> str:
        return f"http://127.0.0.1:{self.standin_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def passwords_file(self) -> Path:
        """Where Airflow's simple auth manager writes the generated admin password."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    def env(self) -> dict[str, str]:
        """The environment every Airflow process and CLI call of this stack gets."""
        self.home.mkdir(parents=True, exist_ok=True)
        secret_file = self.home / "jwt_secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
            secret_file.chmod(0o600)
        connection = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": self.standin_url},
        }
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            # SQLite has one writer at a time: wait for the lock instead of failing after 5 s.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "local.stack.SQLITE_CONNECT_ARGS",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",  # the UI keeps its login, whatever the shell says
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.ui_url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.ui_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            **self.extra_env,
        }

    # ----------------------------------------------------------------------------------- processes

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start_standin(self) -> None:
        from local.standin import wait_until_up

        argv = [sys.executable, "-m", "local.standin", "--port", str(self.standin_port), *self.standin_args]
        self._spawn("standin", argv)
        wait_until_up(self.standin_url, timeout=60)
        deadline = time.monotonic() + 30
        while "ready" not in (self.logs / "standin.log").read_text():
            self._check_alive("standin")
            if time.monotonic() > deadline:
                raise TimeoutError("the AWS stand-in did not finish provisioning")
            time.sleep(0.2)

    def migrate(self) -> None:
        self.airflow("db", "migrate")

    def start_airflow(self, components: tuple[str, ...] = AIRFLOW_COMPONENTS) -> None:
        for component in components:
            # Their log servers bind every interface; the api-server reads the log files directly here.
            quiet = ["--skip-serve-logs"] if component in ("scheduler", "triggerer") else []
            self._spawn(component, [sys.executable, "-m", "airflow", component, *quiet])

    def start(self) -> None:
        """Stand-in, database, then every Airflow component."""
        self.start_standin()
        self.migrate()
        self.start_airflow()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM each process group, then SIGKILL what is left after ``timeout`` seconds."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # children (task runners) may outlive their parent
            process.wait()
        self.processes.clear()

    def stop_component(self, component: str) -> None:
        """Stop one component's process group (SIGTERM, then SIGKILL after 30 s)."""
        process = self.processes.pop(component)
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            _signal_group(process, signal.SIGKILL)
            process.wait()

    def restart(self, component: str) -> None:
        """Stop one Airflow component's process group and start it again."""
        self.stop_component(component)
        self.start_airflow((component,))  # with the options of the first start (no log server)

    def create_backfill(self, dag_id: str, *args: str, attempts: int = 5) -> subprocess.CompletedProcess:
        """``airflow backfill create`` while the scheduler is stopped.

        SQLite lets one writer in at a time, and a backfill created while another process writes can
        fail ("database is locked"). The scheduler is stopped for those seconds, and a try that created
        nothing is repeated.
        """
        running = "scheduler" in self.processes
        if running:
            self.stop_component("scheduler")
        try:
            for attempt in range(1, attempts + 1):
                before = self.query("SELECT count(*) FROM backfill")[0][0]
                done = self.airflow("backfill", "create", "--dag-id", dag_id, *args, check=False)
                created = self.query("SELECT count(*) FROM backfill")[0][0] > before
                if done.returncode == 0 or created or "database is locked" not in done.stderr or attempt == attempts:
                    break
                time.sleep(2 * attempt)
            done.check_returncode()
            return done
        finally:
            if running:
                self.start_airflow(("scheduler",))

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text()[-2000:]
            raise RuntimeError(f"{name} exited with code {process.returncode}:\n{tail}")

    # ------------------------------------------------------------------------------------- queries

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command with this stack's environment."""
        return subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            cwd=ROOT,
            env=self.env(),
            check=check,
            capture_output=True,
            text=True,
        )

    def query(self, sql: str, *params) -> list[tuple]:
        """Read the metadata database (SQLite) directly: fast, and no CLI start-up per poll."""
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Block until the dag-processor has serialized ``dag_id``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", dag_id):
                    return
            except sqlite3.OperationalError:
                pass  # tables not there yet
            for name in self.processes:
                self._check_alive(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} was not serialized within {timeout:.0f}s")
            time.sleep(1)

    def run_states(self, dag_id: str) -> list[tuple[str, str, str]]:
        """(run_id, run_type, state) of every run of ``dag_id``, oldest first."""
        return self.query("SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? ORDER BY id", dag_id)

    def admin_password(self, timeout: float = 60) -> str:
        """The generated admin password (the api-server writes it on start)."""
        deadline = time.monotonic() + timeout
        while not self.passwords_file.exists():
            if time.monotonic() > deadline:
                return f"(see {self.passwords_file})"
            time.sleep(0.5)
        return json.loads(self.passwords_file.read_text()).get(ADMIN_USER, "")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
