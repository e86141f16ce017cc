"""Shared fixtures: an isolated Airflow home with a PostgreSQL metadata database, the local AWS
stand-in, the real Poloniex data in tests/data/poloniex.

Airflow reads its settings when first imported, so the environment is set here, at collection.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLONIEX_CSV = ROOT / "tests" / "data" / "poloniex" / "poloniex_BTC_ETH_5m_2017-07-14_2017-08-09.csv"
#: Scripts the session's stand-in runs besides the project's Glue script (tests of the runner itself).
GLUE_TEST_SCRIPTS = ROOT / "tests" / "data" / "glue_scripts"


def _reserve_port() -> str:
    """A free port on 127.0.0.1, kept bound (never listening) until the stand-in starts: minutes may pass
    before it does, while this worker's and the other workers' stacks take free ports of their own."""
    global _PORT_RESERVATION
    _PORT_RESERVATION = socket.socket()
    _PORT_RESERVATION.bind(("127.0.0.1", 0))
    return str(_PORT_RESERVATION.getsockname()[1])


def _release_port() -> None:
    for name in ("conftest", "tests.conftest"):  # whichever import reserved it
        reservation = getattr(sys.modules.get(name), "_PORT_RESERVATION", None)
        if reservation is not None:
            reservation.close()


_PORT_RESERVATION: socket.socket | None = None
# Chosen once per session (this module may be imported twice: as conftest and as tests.conftest), and
# once per xdist worker: a worker inherits the controller's environment, so the names carry its id.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_PORT_KEY = f"PRICE_TEST_STANDIN_PORT{_WORKER}"
STANDIN_PORT = int(
    os.environ[_PORT_KEY] if _PORT_KEY in os.environ else os.environ.setdefault(_PORT_KEY, _reserve_port())
)
STANDIN_URL = f"http://127.0.0.1:{STANDIN_PORT}"
AIRFLOW_HOME = Path(
    os.environ.setdefault(f"PRICE_TEST_AIRFLOW_HOME{_WORKER}", tempfile.mkdtemp(prefix=f"price-airflow-{_WORKER}"))
)
#: One migrated metadata database per test session (every xdist worker's), copied by each stack and
#: ``airflow_db``: made once by the first that needs it, removed at the session's end.
DATABASE_TEMPLATE = Path(
    os.environ.setdefault("PRICE_TEST_DATABASE_TEMPLATE", tempfile.mkdtemp(prefix="price-database-template-"))
)
sys.path.insert(0, str(ROOT))
from local.postgres import Postgres  # noqa: E402 - needs ROOT on the path
from local.standin import credentials  # noqa: E402

POSTGRES = Postgres(AIRFLOW_HOME / "postgres")  # started by the airflow_db fixture
#: What the session's stand-in accepts (generated in AIRFLOW_HOME, as make run's in .local).
STANDIN_CREDENTIALS = credentials(AIRFLOW_HOME)

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": POSTGRES.uri,
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",
        # In-process API apps (the plugin tests) sign and check tokens with it; Airflow writes one into
        # airflow.cfg only on some code paths, so a test order could leave it unset.
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.setdefault(
            f"PRICE_TEST_JWT_SECRET{_WORKER}", secrets.token_urlsafe(64)
        ),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": STANDIN_CREDENTIALS.access_key,
                "password": STANDIN_CREDENTIALS.secret_key,
                "extra": {"region_name": "us-east-1", "endpoint_url": STANDIN_URL},
            }
        ),
        # Short waits so a missing record fails a test in seconds, not minutes.
        "PRICE_SENSOR_TIMEOUT_SECONDS": "6",
        "PRICE_SENSOR_POKE_SECONDS": "1",
        "PRICE_PAIRS_DEADLINE_SECONDS": "3",
        # The tests' local stacks keep Airflow's own idle loop (local/stack.py polls 5 times faster for
        # the latency benchmark): several stacks share two cores here, and an idle scheduler at 0.2 s
        # costs about 8 s of CPU a minute with its database.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1",
        # The local stacks' stand-ins keep each Glue run RUNNING 5 s before its script starts, as a Python
        # shell job's start-up on AWS (tens of seconds) does. A run that ends a second after its task
        # deferred lets Airflow 3.3.2 read the deferring try's late "success" after the resumed try began,
        # and fail that try (apache/airflow#72716): a retry that cost minutes on a busy machine.
        "STANDIN_GLUE_STARTUP_SECONDS": "5",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (``make test``: ``--dist loadfile``) each file is one unit of work, handed out in
    collection order. Files that start their own Airflow stack take minutes, so they go first, then
    those on the stand-in or the metadata database, then the rest: the last unit a worker picks up is
    a short one. Within a class the order is the collection order, and a file's tests stay together."""
    heavy = {"stack_dir": 0, "airflow_db": 1, "standin": 1}

    def weight(item: pytest.Item) -> int:
        return min((heavy[name] for name in item.fixturenames if name in heavy), default=2)

    by_file: dict[str, int] = {}
    for item in items:
        by_file[item.location[0]] = min(by_file.get(item.location[0], 2), weight(item))
    items.sort(key=lambda item: by_file[item.location[0]])


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _WORKER:  # the controller (or the one process): every worker is done with the template
        import shutil

        shutil.rmtree(DATABASE_TEMPLATE, ignore_errors=True)


def migrated_database_copy(data_dir: Path) -> None:
    """A new metadata database in ``data_dir`` (absent), migrated: a copy of the session's template."""
    from local.stack import migrated_database

    Postgres(data_dir).copy_from(migrated_database(DATABASE_TEMPLATE))


@pytest.fixture(scope="session")
def standin():
    """The local AWS stand-in, a real server on loopback, provisioned; yields its URL."""
    from local.standin import wait_until_up

    log_path = AIRFLOW_HOME / "standin.log"
    _release_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            # dag.test() runs the Glue trigger inline (no executor, no race): no start-up to wait for.
            [
                sys.executable,
                "-m",
                "local.standin",
                "--port",
                str(STANDIN_PORT),
                "--glue-minute-seconds",
                "3",
                "--glue-startup-seconds",
                "0",
                "--state-dir",
                str(AIRFLOW_HOME),
                "--test-glue-scripts",
                str(GLUE_TEST_SCRIPTS),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(STANDIN_URL, STANDIN_CREDENTIALS, timeout=60)
        _wait_provisioned()
        yield STANDIN_URL
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_provisioned(timeout: float = 30) -> None:
    from include.price_pipeline import settings
    from local.standin import client, queue_name

    sqs, deadline = client("sqs", STANDIN_URL, STANDIN_CREDENTIALS), time.monotonic() + timeout
    wanted = queue_name(settings.load().ops_topic_arn)
    while not any(url.endswith(wanted) for url in sqs.list_queues().get("QueueUrls", [])):
        if time.monotonic() > deadline:
            raise TimeoutError("stand-in did not provision its queues")
        time.sleep(0.2)


class Aws:
    """Clients on the stand-in plus helpers the tests share."""

    def __init__(self, url: str):
        from include.price_pipeline import settings
        from local.standin import queue_name

        self.url = url
        self.config = settings.load()
        self.s3, self.sqs, self.glue = self.client("s3"), self.client("sqs"), self.client("glue")
        self.alert_queue = self.sqs.get_queue_url(QueueName=queue_name(self.config.alert_topic_arn))["QueueUrl"]
        self.ops_queue = self.sqs.get_queue_url(QueueName=queue_name(self.config.ops_topic_arn))["QueueUrl"]

    def client(self, service: str):
        """A boto3 client for ``service`` on the stand-in."""
        from local.standin import client

        return client(service, self.url, STANDIN_CREDENTIALS)

    def receive(self, queue_url: str, wait_seconds: int = 1) -> list[dict]:
        """Every SNS notification waiting in the queue (the SNS envelopes, parsed), removing them."""
        out = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
            ).get("Messages", [])
            if not got:
                return out
            for message in got:
                out.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def alerts(self) -> list[dict]:
        return self.receive(self.alert_queue)

    def ops(self) -> list[dict]:
        return self.receive(self.ops_queue)

    def put(self, key: str, body: bytes | str) -> None:
        self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        from include.price_pipeline import store

        return store.list_keys(self.s3, self.config.bucket, prefix)

    def snapshot(self, prefix: str = "crypto/") -> dict[str, bytes]:
        """Every object under ``prefix`` with its bytes."""
        return {key: self.get(key) for key in self.keys(prefix)}

    def run_real_glue_job(self, arguments: dict[str, str], timeout: float = 300, **job_kwargs) -> dict:
        """One run of the pipeline's real Glue job script on the stand-in, as a job of its own (a unique
        name); its finished JobRun. ``arguments`` are the run's (``--window_start`` ...); ``job_kwargs`` go
        to CreateJob (default: ``settings.glue_job_arguments`` as DefaultArguments, a 20-minute Timeout); the
        job's own DefaultArguments (its bundle, ``settings.glue_job_spec``) are always there."""
        import uuid

        from include.price_pipeline import layout, settings

        bundle = settings.glue_job_spec(self.config)["create_job_kwargs"]["DefaultArguments"]
        job_arguments = {**bundle, **job_kwargs.pop("DefaultArguments", settings.glue_job_arguments(self.config))}
        name = f"test-glue-{uuid.uuid4().hex[:12]}"
        script_key = f"{layout.GLUE_SCRIPTS_PREFIX}tests/{name}.py"
        self.s3.upload_file(str(layout.GLUE_SCRIPT_PATH), self.config.bucket, script_key)
        script = f"s3://{self.config.bucket}/{script_key}"
        self.glue.create_job(
            Name=name,
            Role=self.config.glue_role_name,
            Command={"Name": "pythonshell", "PythonVersion": "3.9", "ScriptLocation": script},
            **{"Timeout": 20, "DefaultArguments": job_arguments, **job_kwargs},
        )
        run_id = self.glue.start_job_run(JobName=name, Arguments=arguments)["JobRunId"]
        deadline = time.monotonic() + timeout
        while "CompletedOn" not in (run := self.glue.get_job_run(JobName=name, RunId=run_id)["JobRun"]):
            assert time.monotonic() < deadline, f"Glue run {run_id} of {name} did not finish in {timeout} s"
            time.sleep(0.3)
        return run


@pytest.fixture(scope="session")
def aws_session(standin) -> Aws:
    return Aws(standin)


@pytest.fixture
def aws(aws_session) -> Aws:
    """The stand-in with both notification queues drained and no ops incident open before the test. moto
    delivers an SNS message to its queues within the Publish call, so an empty short poll is an empty queue
    (a long poll here cost every test two idle seconds)."""
    aws_session.receive(aws_session.alert_queue, wait_seconds=0)
    aws_session.receive(aws_session.ops_queue, wait_seconds=0)
    from include.price_pipeline import layout

    # Each test's ops incidents are its own: one another test left open would count, not page, its failures.
    config = aws_session.config
    aws_session.s3.delete_object(Bucket=config.bucket, Key=layout.incidents_key(config.changes_prefix))
    return aws_session


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated PostgreSQL metadata database for the session's AIRFLOW_HOME, a copy of the session's
    template (server stopped and its data removed at the end)."""
    import shutil

    from local.postgres import stop_pid

    migrated_database_copy(POSTGRES.data_dir)
    POSTGRES.prepare()
    with open(AIRFLOW_HOME / "postgres.log", "ab") as log:
        server = subprocess.Popen(
            POSTGRES.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **POSTGRES.identity()
        )

    def alive():
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited ({server.returncode}): see {AIRFLOW_HOME / 'postgres.log'}")

    try:
        POSTGRES.wait_ready(alive)
        yield AIRFLOW_HOME
    finally:
        if "airflow.settings" in sys.modules:  # its atexit hook would talk to a stopped server
            sys.modules["airflow.settings"].dispose_orm()
        stop_pid(server.pid)
        server.wait()
        shutil.rmtree(POSTGRES.data_dir, ignore_errors=True)  # ~40 MB per session; the logs stay


@pytest.fixture(scope="module")
def stack_dir():
    """A state folder for one module's local stack. Not under pytest's basetemp: each pytest session
    (anyone's, as root) makes /tmp/pytest-of-<user> 0700 again, and the database server's own user
    must be able to reach its data folder while the module runs. Its database is a copy of the session's
    migrated one. Afterwards the database (tens of MB) is removed and the logs are kept for a post-mortem."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="price-stack-"))
    migrated_database_copy(path / "postgres")
    yield path
    shutil.rmtree(path / "postgres", ignore_errors=True)


@pytest.fixture(scope="session")
def poloniex_rows() -> list[dict]:
    """The real 5-minute Poloniex BTC_ETH rows (tests/data/poloniex, with its SOURCE.md)."""
    import csv

    with open(POLONIEX_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def utc(*args: int) -> datetime:
    """A UTC datetime, shorter to write in tests."""
    return datetime(*args, tzinfo=UTC)


def make_backfill(stack, monkeypatch, *argv: str) -> tuple[int, str]:
    """``make backfill`` against a local stack (AIRFLOW_PORT as make run's); exit code and output."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from local import backfill

    out = io.StringIO()
    monkeypatch.setenv("AIRFLOW_PORT", str(stack.api_port))
    with redirect_stdout(out), redirect_stderr(out):
        code = backfill.main([*argv, "--state-dir", str(stack.state_dir)])
    return code, out.getvalue()


class ExchangeStandin:
    """The exchange stand-in (local/exchange.py), a real HTTP server on loopback in a thread, and what the
    tests ask it over HTTP, as any client would."""

    def __init__(self):
        import threading

        from local.exchange import serve

        self.server = serve(0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _request(self, path: str, body: dict | None = None):
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        root = self.url.removesuffix("/api/v3")
        with urllib.request.urlopen(urllib.request.Request(root + path, data=data), timeout=10) as answer:  # noqa: S310
            return json.loads(answer.read())

    def fault(self, mode: str, count: int = 1, **spec) -> None:
        """The next ``count`` klines requests answer ``mode`` (rate_limit, unavailable, malformed, html, slow,
        delayed)."""
        self._request("/_exchange/fault", {"mode": mode, "count": count, **spec})

    def damage(self, *damages: dict) -> None:
        """Serve these damaged klines from now on (local/exchange.py: pair, at, values, width, twin)."""
        self._request("/_exchange/damage", {"damages": list(damages)})

    def requests(self) -> int:
        return self._request("/_exchange/requests")["klines"]

    def most_at_once(self) -> int:
        """The most klines requests the stand-in was answering at one time."""
        return self._request("/_exchange/requests")["most_at_once"]

    def klines(self, pair: str, start: datetime, end: datetime) -> list[list]:
        """The served klines of ``pair`` opening in ``[start, end)``, straight from the API."""
        symbol = pair.replace("/", "")
        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1
        return self._request(
            f"/api/v3/klines?symbol={symbol}&interval=5m&startTime={start_ms}&endTime={end_ms}&limit=1000"
        )


@pytest.fixture(scope="session")
def exchange_standin():
    standin = ExchangeStandin()
    yield standin
    standin.server.shutdown()


@pytest.fixture
def exchange(exchange_standin):
    """The exchange stand-in with no fault pending and no damaged kline."""
    exchange_standin.fault("none", 0)
    exchange_standin.damage()
    yield exchange_standin
    exchange_standin.fault("none", 0)
    exchange_standin.damage()


def reads_together(monkeypatch, timeout: float = 30.0, parties: int = 2) -> None:
    """Make ``parties`` threads' first read of an object (``store.read_with_etag``) wait for each other:
    each has read before any writes, so their conditional writes race for real."""
    import threading

    from include.price_pipeline import store

    barrier, first_read = threading.Barrier(parties, timeout=timeout), threading.local()
    real_read = store.read_with_etag

    def read_together(*args):
        body = real_read(*args)
        if not getattr(first_read, "done", False):
            first_read.done = True
            barrier.wait()
        return body

    monkeypatch.setattr(store, "read_with_etag", read_together)
