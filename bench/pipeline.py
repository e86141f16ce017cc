"""Measurements against the real local stack: the AWS stand-in plus Airflow's scheduler, dag-processor,
triggerer and api-server as separate processes (``local.stack.Stack``) in a temporary state folder on
free ports. Runs are started the way an operator starts them (``airflow dags trigger``, ``airflow
backfill create``) and timed from the metadata database's own timestamps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import statistics
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from include.glue.price_glue import validation
from include.price_pipeline import layout, settings
from local.faults import set_faults
from local.feed import pair_record, synthetic_record, write_record
from local.stack import ADMIN_USER, AIRFLOW_COMPONENTS, Stack
from local.standin import queue_name, signed_headers

LIVE_DAG = "price_notification"
BULK_DAG = "price_history_backfill"
TERMINAL = ("success", "failed")
DEFAULT_PARAMS = {
    "threshold_pct": 1.0,
    "lookback_minutes": 60,
    "notify_on_backfill": False,
    "min_abs_move": 0.0,
    "repeat_windows": 0,
}
#: Glue Python shell start-up on AWS as the stand-in models it (``glue_startup_ms``): a job run stays
#: RUNNING this long before its script starts. An assumption (AWS quotes no figure), not a measurement.
GLUE_STARTUP_MODEL_MS = 20000
#: How long after a sensor defers its trigger has surely made its first check (the triggerer picks
#: up new triggers every second or so).
TRIGGER_FIRST_CHECK_SECONDS = 3.0
#: The earliest window a bench runs as a live one (``live_latency``).
LIVE_WINDOWS_SINCE = datetime(2025, 1, 1, tzinfo=UTC)
#: Previous prices of a live window (the default pair's, other pairs'), and the measured windows' move.
FLAT = {False: 3000.0, True: 100.0}
MOVE = 1.02
GLUE_LOG_DELIVERY = ("CreateLogGroup", "CreateLogStream", "PutLogEvents")
_CREDENTIAL_SERVICE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


def flat_record(slot: datetime, price: float) -> dict:
    """A record of ``slot`` at ``price``, with a narrow spread (the feed's formats rotate as usual)."""
    return {"date": int(slot.timestamp()), "weightedAverage": price, "high": price * 1.001, "low": price * 0.999,
            "open": price, "close": price, "volume": 50.0 * price, "quoteVolume": 50.0}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_db_time(value: datetime | None) -> datetime | None:
    """A timestamp from the metadata database, in UTC."""
    return None if value is None else value.astimezone(UTC)


@contextlib.contextmanager
def running(prefix: str, log=print, keep_state: bool = False, rules: dict | None = None,
            exchange: bool = False, executor: str = "LocalExecutor") -> Iterator[Bench]:  # fmt: skip
    """A ``Bench`` on a fresh stack in a new temporary state folder (``rules``: a rules file for it; with
    ``exchange``, the exchange stand-in too; ``executor``: ``CeleryExecutor`` for two Celery workers and a
    local Redis), started, then stopped and its folder removed (kept with ``keep_state``) however the block
    ends."""
    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    rules_file = None
    if rules is not None:
        rules_file = state_dir / "rules.json"
        rules_file.write_text(json.dumps(rules, indent=1))
    bench = Bench(state_dir, log=log, rules_file=rules_file, exchange=exchange, executor=executor)
    try:
        bench.start()
        yield bench
    finally:
        log("stopping the stack ...")
        bench.stop()
        if keep_state:
            log(f"state (logs, database) kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


class Disrupted(RuntimeError):
    """An Airflow component died (and was restarted) while a figure was being measured."""


class Bench:
    """One local stack for every measurement of a benchmark run."""

    def __init__(self, state_dir: Path, log=print, rules_file: Path | None = None, exchange: bool = False,
                 executor: str = "LocalExecutor"):  # fmt: skip
        self.state_dir = state_dir
        self.recording = state_dir / "moto_recording.jsonl"
        # The live-latency windows lie in 2025, away from the wall clock, and their runs must wait for the
        # record as a live run does (a window that ended longer ago than the sensor timeout is looked for
        # once): the bench's sensor timeout outlasts their age.
        live_age = datetime.now(UTC) - LIVE_WINDOWS_SINCE + timedelta(days=1)
        extra_env = {
            "MOTO_RECORDER_FILEPATH": str(self.recording),
            "PRICE_SENSOR_TIMEOUT_SECONDS": str(int(live_age.total_seconds())),
        }
        if rules_file is not None:
            extra_env["PRICE_RULES_FILE"] = str(rules_file)
        self.stack = Stack(state_dir=state_dir, standin_port=free_port(), api_port=free_port(), extra_env=extra_env,
                           exchange_port=free_port() if exchange else 0, executor=executor)  # fmt: skip
        self.config = settings.load(self.stack.env())  # the stack's settings, as its tasks see them
        self.rule_set = settings.load_rules(self.config)
        self.other_pairs = [pair for pair in self.rule_set.pairs if pair != self.rule_set.default_pair]
        self.log = log
        self.s3 = self.sqs = self.glue = None
        self.restarts: list[dict] = []

    def supervise(self) -> None:
        """Restart an Airflow component that died, note it, and raise Disrupted: a measurement that
        lived through a restart is not a clean figure."""
        for name in AIRFLOW_COMPONENTS:
            process = self.stack.processes.get(name)
            if process is None or process.poll() is None:
                continue
            tail = (self.stack.logs / f"{name}.log").read_text(errors="replace")[-1500:]
            self.log(f"  {name} exited with code {process.returncode}; restarting it")
            self.stack.restart(name)
            self.restarts.append({"component": name, "at": layout.iso(datetime.now(UTC)), "log_tail": tail})
            raise Disrupted(f"{name} exited with code {process.returncode} during a measurement")

    # ------------------------------------------------------------------------------ the stack

    def start(self) -> None:
        self.log(f"starting the stand-in and Airflow in {self.state_dir} ...")
        self.stack.start()
        self.s3, self.sqs, self.glue = self.stack.client("s3"), self.stack.client("sqs"), self.stack.client("glue")
        self.alert_queue = self.sqs.get_queue_url(QueueName=queue_name(self.config.alert_topic_arn))["QueueUrl"]
        for dag_id in (LIVE_DAG, BULK_DAG):
            self.stack.wait_for_dag(dag_id, timeout=300)
            self.airflow("dags", "unpause", dag_id)
        self.log("stack ready")

    def stop(self) -> None:
        self.stack.stop()

    # ------------------------------------------------------------------------------ data

    def write_history(self, slots: list[datetime]) -> None:
        """The local feed's records of ``slots`` for every configured pair (the default pair's synthetic walk,
        the others' demo records), formats rotating as the feed rotates them."""

        def write(slot: datetime) -> None:
            for pair in self.other_pairs:
                record = pair_record(slot, pair, self.rule_set.pairs[pair])
                write_record(self.s3, self.config.bucket, record, pair=pair)
            write_record(self.s3, self.config.bucket, synthetic_record(slot), pair=self.rule_set.default_pair)

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(write, slots))

    def seed_canonical(self, slot: datetime, prices: dict[str, float]) -> None:
        """The canonical CSV of ``slot`` as the Glue job writes it (the previous prices of a live window):
        a row per pair of ``prices`` (``{pair: weighted average}``)."""
        aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
        rows = []
        for pair, price in sorted(prices.items()):
            record = {"date": int(slot.timestamp()), "weightedAverage": price, "volume": 1.0}
            record |= {"high": price * 1.001, "low": price * 0.999, "quoteVolume": 1.0}
            source = layout.ingestion_key(slot, ".json", pair=pair)
            rows.append(validation.normalize(record, aliases, pair, source, "json"))
        self.s3.put_object(Bucket=self.config.bucket, Key=layout.analysis_key(slot), Body=validation.to_csv(*rows))

    def standin_rate(self, count: int = 2000, threads: int = 10) -> dict:
        """Requests per second the stand-in answers one client process for small PUTs and GETs (the bulk
        runs make three S3 requests per window: GET raw, PUT CSV, PUT ledger)."""
        keys = [f"bench-rate/{index:06d}" for index in range(count)]
        body = b"x" * 300
        out = {}
        for name, call in (
            ("put", lambda key: self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body)),
            ("get", lambda key: self.s3.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()),
        ):
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(call, keys))
            out[f"{name}_per_second"] = count / (time.perf_counter() - started)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda key: self.s3.delete_object(Bucket=self.config.bucket, Key=key), keys))
        return out

    # ------------------------------------------------------------------------------ runs

    def airflow(self, *argv: str):
        """An ``airflow`` CLI command; raises with its output when it fails."""
        done = self.stack.airflow(*argv, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(argv[:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done

    def trigger(self, dag_id: str, run_id: str, conf: dict, logical_date: datetime | None = None) -> None:
        argv = ["dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf)]
        if logical_date is not None:
            argv += ["--logical-date", logical_date.isoformat()]
        self.airflow(*argv)

    def trigger_window(self, dag_id: str, run_id: str, slot: datetime, conf: dict) -> None:
        """A manual run of the window starting at ``slot`` through the REST API (the CLI infers the data
        interval from the wall clock, the API takes it explicitly)."""
        body = {
            "dag_run_id": run_id,
            "logical_date": layout.iso(slot),
            "data_interval_start": layout.iso(slot),
            "data_interval_end": layout.iso(slot + layout.SLOT),
            "conf": conf,
        }
        self._api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def _api(self, method: str, path: str, body: dict) -> dict:
        if getattr(self, "_token", None) is None:
            login = {"username": ADMIN_USER, "password": self.stack.admin_password()}
            self._token = self._request("POST", "/auth/token", login, token=None)["access_token"]
        return self._request(method, path, body, token=self._token)

    def _request(self, method: str, path: str, body: dict, token: str | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"{self.stack.ui_url}{path}", data=json.dumps(body).encode(), headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback api-server
            return json.loads(response.read())

    def run_row(self, dag_id: str, run_id: str) -> dict | None:
        rows = self.stack.query(
            "SELECT state, queued_at, start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
            dag_id,
            run_id,
        )
        if not rows:
            return None
        state, queued, started, ended = rows[0]
        return {
            "state": state,
            "queued_at": parse_db_time(queued),
            "start_date": parse_db_time(started),
            "end_date": parse_db_time(ended),
        }

    def wait_run(self, dag_id: str, run_id: str, timeout: float, progress=None) -> dict:
        """Until the run ends; ``progress()`` gives a line logged whenever it changes."""
        deadline, shown = time.monotonic() + timeout, None
        while True:
            row = self.run_row(dag_id, run_id)
            if progress is not None and (line := progress()) != shown:
                self.log(line)
                shown = line
            if row and row["state"] in TERMINAL:
                return row
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} {run_id} still {row and row['state']} after {timeout:.0f}s")
            self.supervise()
            time.sleep(0.5)

    def task_times(self, dag_id: str, run_id: str) -> dict[str, dict]:
        rows = self.stack.query(
            "SELECT task_id, state, start_date, end_date, try_number FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s",
            dag_id,
            run_id,
        )
        grouped = defaultdict(list)  # a mapped task has a row per map index: its first start, last end
        for task_id, state, started, ended, tries in rows:
            grouped[task_id].append((state, parse_db_time(started), parse_db_time(ended), tries))
        out = {}
        for task_id, instances in grouped.items():
            starts = [started for _, started, _, _ in instances if started]
            ends = [ended for _, _, ended, _ in instances]
            started = min(starts) if starts else None
            ended = max(ends) if ends and None not in ends else None
            states = {state for state, _, _, _ in instances}
            out[task_id] = {
                "state": states.pop() if len(states) == 1 else ",".join(sorted(map(str, states))),
                "seconds": (ended - started).total_seconds() if started and ended else None,
                "tries": max(tries for _, _, _, tries in instances),
                "start": started,
                "end": ended,
                "instances": len(instances),
            }
        return out

    def task_state(self, dag_id: str, run_id: str, task_id: str) -> str | None:
        rows = self.stack.query(
            "SELECT state FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s",
            dag_id,
            run_id,
            task_id,
        )
        return rows[0][0] if rows else None

    def last_glue_run(self) -> dict:
        runs = self.glue.get_job_runs(JobName=self.config.glue_job_name)["JobRuns"]
        latest = max(runs, key=lambda run: run["StartedOn"])
        seconds = (latest["CompletedOn"] - latest["StartedOn"]).total_seconds() if "CompletedOn" in latest else None
        return {
            "id": latest["Id"],
            "state": latest["JobRunState"],
            "seconds": seconds,
            "started": latest["StartedOn"],
            "completed": latest.get("CompletedOn"),
        }

    # ------------------------------------------------------------------------------ figures

    def bulk_backfill(self, start: datetime, end: datetime, timeout: float = 3600, **params) -> dict:
        """price_history_backfill over ``[start, end)`` (``params``: more of its params), triggered and run by
        the scheduler."""
        run_id = f"bench_bulk_{layout.slot_stamp(start)}_{layout.slot_stamp(end)}_{int(time.time())}"
        conf = {**DEFAULT_PARAMS, "start": layout.iso(start), "end": layout.iso(end), **params}
        self.trigger(BULK_DAG, run_id, conf)
        windows = len(layout.slots_between(start, end))

        def progress() -> str:  # one run does every window: its tasks are the steps
            tasks = self.task_times(BULK_DAG, run_id)
            done = [task for task, times in tasks.items() if times["state"] in TERMINAL]
            going = sorted(f"{task} {t['state']}" for task, t in tasks.items() if t["state"] not in (*TERMINAL, None))
            return f"  {windows:,} windows in one run: {len(done)} of {len(tasks)} tasks done; {', '.join(going)}"

        row = self.wait_run(BULK_DAG, run_id, timeout, progress)
        tasks = self.task_times(BULK_DAG, run_id)
        seconds = (row["end_date"] - row["queued_at"]).total_seconds()
        summary = self.xcom(BULK_DAG, run_id, "analyse_price_history")
        return {
            "run_id": run_id,
            "state": row["state"],
            "windows": windows,
            "seconds": seconds,
            "seconds_per_window": seconds / windows,
            "fetch_task_seconds": tasks.get("fetch_exchange_history", {}).get("seconds"),
            "glue_task_seconds": tasks.get("normalize_price_history", {}).get("seconds"),
            "analysis_task_seconds": tasks.get("analyse_price_history", {}).get("seconds"),
            "glue_run": self.last_glue_run(),
            "summary": summary,
        }

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        rows = self.stack.query(
            "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s AND key = 'return_value'",
            dag_id,
            run_id,
            task_id,
        )
        if not rows:
            return None
        value = rows[0][0]
        with contextlib.suppress(TypeError, ValueError):
            while isinstance(value, (str, bytes)):
                value = json.loads(value)
        return value

    def native_backfill(self, first: datetime, windows: int, max_active_runs: int = 8, timeout: float = 3600) -> dict:
        """``airflow backfill create`` of price_notification over ``windows`` windows from ``first``.

        Created with the CLI while the scheduler runs, which then runs the backfill's runs (sensor, Glue
        job run, analysis per window); timed from the start of the first run to the end of the last.
        Progress (windows done / total) is logged as it changes.
        """
        last = first + layout.SLOT * (windows - 1)
        done = self.airflow(
            "backfill",
            "create",
            "--dag-id",
            LIVE_DAG,
            "--from-date",
            first.isoformat(),
            "--to-date",
            last.isoformat(),
            "--max-active-runs",
            str(max_active_runs),
            "--reprocess-behavior",
            "completed",
            "--dag-run-conf",
            json.dumps({"notify_on_backfill": False}),
        )
        [(backfill_id,)] = self.stack.query("SELECT max(id) FROM backfill")
        deadline, shown = time.monotonic() + timeout, None
        while True:
            rows = self.stack.query(
                "SELECT state, start_date, end_date FROM dag_run WHERE backfill_id = %s", backfill_id
            )
            finished = Counter(state for state, _, _ in rows if state in TERMINAL)
            if (progress := (finished["success"], finished["failed"], len(rows))) != shown:
                self.log(f"  windows done {progress[0]}, failed {progress[1]}, of {progress[2]}")
                shown = progress
            if rows and all(state in TERMINAL for state, _, _ in rows):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"native backfill {backfill_id} not finished after {timeout:.0f}s: {rows}")
            try:
                self.supervise()
            except Disrupted:
                self._api("PUT", f"/api/v2/backfills/{backfill_id}/cancel", {})  # one active backfill per DAG
                raise
            time.sleep(1)
        started = min(parse_db_time(start) for _, start, _ in rows if start)
        seconds = (max(parse_db_time(end) for _, _, end in rows) - started).total_seconds()
        return {
            "backfill_id": backfill_id,
            "runs": len(rows),
            "states": dict(Counter(state for state, _, _ in rows)),
            "seconds": seconds,
            "seconds_per_window": seconds / len(rows),
            "max_active_runs": max_active_runs,
            "cli_output": done.stdout[-500:],
        }

    def live_latency(self, first: datetime, windows: int, record_requests: bool = True,
                     firing: int | None = None) -> dict:  # fmt: skip
        """Record landing -> alert in the subscriber queue, for ``windows`` live runs of price_notification.

        Each run is triggered through the REST API for a past window with ``notify_on_backfill`` (a
        scheduled run needs the wall clock to reach the window; the tasks are the same), an hour of
        previous prices is in place for every configured pair, and the records, 2 % above them, are
        written only once the run's sensor is waiting: from then on the path is the live one (deferred
        sensor poke, Glue job run, analysis, SNS -> SQS). Other pairs' records land first, the default
        pair's (which the sensor waits for) last, as ``make run``'s feed writes them; the latency runs from
        that last record to the window's last alert. With ``record_requests`` two more windows run with the
        stand-in recording every request: one where every pair fires (``request_window``) and one where
        none does (``quiet_window``), to count the AWS requests of a window and of its alerts. ``firing``: how
        many pairs move in a firing window (the default pair and the first others; default every pair).
        """
        self._drain()
        # An hour of flat prices before each window, as in steady state: the analysis reads all of them.
        rule = settings.load_rules(self.config).default_rule
        lookback = (rule.minutes + rule.tolerance_minutes) // 5
        recorded = ("firing", "quiet") if record_requests else ()
        slots = [first + layout.SLOT * (lookback + 3) * i for i in range(windows + len(recorded))]
        flat = {self.rule_set.default_pair: FLAT[False]} | dict.fromkeys(self.other_pairs, FLAT[True])
        with ThreadPoolExecutor(10) as pool:
            seeds = [slot - layout.SLOT * back for slot in slots for back in range(1, lookback + 1)]
            list(pool.map(lambda seed: self.seed_canonical(seed, flat), seeds))
        measured, windows_recorded, stamp = [], {}, int(time.time())
        for index, slot in enumerate(slots):
            kind = recorded[index - windows] if index >= windows else "measured"
            run_id = f"bench_live_{layout.slot_stamp(slot)}_{stamp}"
            if kind != "measured":
                self._recorder("reset-recording")
                self._recorder("start-recording")
            self.trigger_window(LIVE_DAG, run_id, slot, {**DEFAULT_PARAMS, "notify_on_backfill": True})
            self._wait_task_state(LIVE_DAG, run_id, "wait_for_price_record", ("deferred", "running"), 300)
            # Land the record at evenly spread points of the sensor's poke cycle, as a producer would: the
            # trigger checks once within ~3 s of the deferral, then every sensor_poke_seconds.
            phase = self.config.sensor_poke_seconds * (index % max(1, windows)) / max(1, windows)
            time.sleep(TRIGGER_FIRST_CHECK_SECONDS + phase)
            movers = 0 if kind == "quiet" else (firing or 1 + len(self.other_pairs)) - 1
            for rank, pair in enumerate(self.other_pairs):
                move = MOVE if rank < movers else 1.0
                write_record(self.s3, self.config.bucket, flat_record(slot, FLAT[True] * move), pair=pair)
            landed = time.time()
            write_record(
                self.s3,
                self.config.bucket,
                flat_record(slot, FLAT[False] * (1.0 if kind == "quiet" else MOVE)),
                pair=self.rule_set.default_pair,
            )
            expected = 0 if kind == "quiet" else 1 + movers
            sent = self._wait_alerts(slot, expected, timeout=900)
            row = self.wait_run(LIVE_DAG, run_id, 900)
            tasks = self.task_times(LIVE_DAG, run_id)
            sensor_end = tasks["wait_for_price_record"]["end"]
            glue_run = self.last_glue_run()
            last = max(sent, default=landed)
            result = {
                "window": layout.iso(slot),
                "pairs": 1 + len(self.other_pairs),
                "alerts": len(sent),
                "landed_after_deferral_seconds": TRIGGER_FIRST_CHECK_SECONDS + phase,
                "seconds": last - landed,
                "first_alert_seconds": min(sent, default=landed) - landed,
                "sensor_noticed_seconds": sensor_end.timestamp() - landed if sensor_end else None,
                "glue_task_seconds": tasks["normalize_price_record"]["seconds"],
                "analyse_task_seconds": tasks["analyse_pairs"]["seconds"],
                "publish_task_seconds": tasks.get("publish_price_alerts", {}).get("seconds"),
                "run_state": row["state"],
                "tries": {task_id: task["tries"] for task_id, task in tasks.items()},
                "timeline": timeline(landed, tasks, glue_run, last),
            }
            if kind != "measured":
                self._recorder("stop-recording")
                result["requests"] = self.count_requests(slot)
                result["glue_run"] = glue_run
                result["object_bytes"] = self.window_bytes(slot)
                result["glue_log_bytes"] = self.glue_log_bytes(result["glue_run"]["id"])
                windows_recorded[kind] = result
            else:
                measured.append(result)
            self.log(f"  windows done {index + 1} of {len(slots)} ({kind}: {result['seconds']:.1f} s, "
                     f"{len(sent)} alerts)")  # fmt: skip
        latencies = [m["seconds"] for m in measured]
        return {
            "windows": measured,
            "pairs": 1 + len(self.other_pairs),
            "median_seconds": statistics.median(latencies),
            "max_seconds": max(latencies),
            "min_seconds": min(latencies),
            "sensor_poke_seconds": self.config.sensor_poke_seconds,
            "glue_poll_seconds": self.config.glue_poll_seconds,
            "request_window": windows_recorded.get("firing"),
            "quiet_window": windows_recorded.get("quiet"),
        }

    def live_latency_glue_startup(self, first: datetime, windows: int, startup_ms: int) -> dict:
        """``live_latency`` with the stand-in holding each Glue job run RUNNING ``startup_ms`` before its
        script starts: Glue's start-up on AWS, which the stand-in otherwise skips."""
        set_faults(self.stack.standin_url, f"glue_startup_ms={startup_ms}")
        try:
            return self.live_latency(first, windows, record_requests=False) | {"glue_startup_ms": startup_ms}
        finally:
            set_faults(self.stack.standin_url, "off")

    def _wait_task_state(self, dag_id, run_id, task_id, states, timeout) -> None:
        deadline = time.monotonic() + timeout
        while self.task_state(dag_id, run_id, task_id) not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task_id} of {run_id} not in {states} after {timeout}s")
            self.supervise()
            time.sleep(0.2)

    def _drain(self) -> None:
        while got := self.sqs.receive_message(QueueUrl=self.alert_queue, MaxNumberOfMessages=10).get("Messages"):
            for message in got:
                self.sqs.delete_message(QueueUrl=self.alert_queue, ReceiptHandle=message["ReceiptHandle"])

    def _wait_alerts(self, slot: datetime, expected: int, timeout: float) -> list[float]:
        """SQS SentTimestamps of the ``expected`` alerts of the window starting at ``slot`` (none expected:
        the run's end is waited for instead, by the caller)."""
        needle = re.compile(rf"Window:\s+{re.escape(layout.iso(slot))}")
        deadline, sent = time.monotonic() + timeout, []
        while len(sent) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(sent)} of {expected} alerts for window {layout.iso(slot)} within {timeout:.0f}s"
                )
            got = self.sqs.receive_message(
                QueueUrl=self.alert_queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["SentTimestamp"]
            ).get("Messages", [])
            self.supervise()
            for message in got:
                self.sqs.delete_message(QueueUrl=self.alert_queue, ReceiptHandle=message["ReceiptHandle"])
                if needle.search(json.loads(message["Body"]).get("Message", "")):
                    sent.append(int(message["Attributes"]["SentTimestamp"]) / 1000)
        return sent

    # ------------------------------------------------------------------------------ requests

    def _recorder(self, action: str) -> None:
        url = f"{self.stack.standin_url}/moto-api/recorder/{action}"
        headers = signed_headers("POST", url, self.stack.aws_credentials)  # the stand-in refuses unsigned requests
        request = urllib.request.Request(url, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback stand-in
            response.read()

    def count_requests(self, slot: datetime) -> dict:
        """AWS requests the pipeline made for one window, by service and operation, from the recording.

        Left out (counted under ``excluded``): the producers' PUTs of the window's records (one per pair:
        the feed's cost, whatever the pipeline does), requests about other windows (the sensors of
        scheduled runs waiting on the current wall-clock window), the benchmark's own SQS reads and the
        stand-in's delivery of the job's log lines (on AWS, Glue writes them: ingestion, not requests).
        """
        counts: dict[str, Counter] = defaultdict(Counter)
        other = Counter()
        window_day = layout.partition(slot)
        records = layout.ingestion_window_prefix(slot, self.config.ingestion_prefix)
        for entry in recorded_requests(self.recording.read_text()):
            service, operation, target = classify(entry)
            if service == "s3" and target is not None:
                if target.startswith(records) and operation == "PutObject":
                    other["producer PutObject"] += 1
                    continue
                if "year=" in target and window_day not in target:
                    other[operation] += 1
                    continue
            if service == "sqs":
                continue  # the benchmark reading the subscriber queue
            if service == "logs" and operation in GLUE_LOG_DELIVERY:
                other[f"logs {operation}"] += 1  # the stand-in delivering Glue's logs, as Glue does on AWS
                continue
            counts[service][operation] += 1
        return {"by_service": {s: dict(sorted(c.items())) for s, c in sorted(counts.items())}, "excluded": dict(other)}

    def window_bytes(self, slot: datetime) -> dict:
        """Bytes the window stores, every pair together: raw records, canonical CSVs, ledger entries."""
        prefixes = {
            "raw": self.config.ingestion_prefix,
            "canonical_csv": self.config.analysis_prefix,
            "ledger": self.config.changes_prefix,
        }
        out = {}
        for name, prefix in prefixes.items():
            window_prefix = layout.ingestion_window_prefix(slot, prefix)  # the window's own key start, any prefix
            listed = self.s3.list_objects_v2(Bucket=self.config.bucket, Prefix=window_prefix)
            out[name] = sum(item["Size"] for item in listed.get("Contents", []))
        return out

    def task_peak_memory_mib(self, task_id: str) -> int | None:
        """The largest peak memory the task's processes logged (``runs.peak_memory_mib``), over every run."""
        found = re.compile(r"Peak memory of this task's process: (\d+) MiB")
        peaks = [int(match.group(1)) for path in (self.stack.logs / "tasks").rglob(f"task_id={task_id}/*.log")
                 for match in found.finditer(path.read_text(errors="replace"))]  # fmt: skip
        return max(peaks, default=None)

    def glue_summary(self, run_id: str) -> dict:
        """The job's own ``SUMMARY`` line of a run (its output log), ``{}`` when there is none."""
        logs = self.stack.client("logs")
        events = logs.get_log_events(logGroupName="/aws-glue/python-jobs/output", logStreamName=run_id,
                                     startFromHead=True)["events"]  # fmt: skip
        lines = [line for event in events for line in event["message"].splitlines() if line.startswith("SUMMARY ")]
        return json.loads(lines[-1].removeprefix("SUMMARY ")) if lines else {}

    def glue_log_bytes(self, run_id: str) -> int:
        logs = self.stack.client("logs")
        total = 0
        for group in ("/aws-glue/python-jobs/output", "/aws-glue/python-jobs/error"):
            with contextlib.suppress(Exception):
                events = logs.get_log_events(logGroupName=group, logStreamName=run_id, startFromHead=True)["events"]
                total += sum(len(event["message"].encode()) for event in events)
        return total

    # ------------------------------------------------------------------------------ parsing

    def parse_times(self) -> dict:
        """DAG file parse time: the dag-processor's own last_parse_duration per DAG, and ``airflow dags
        report`` (an in-process DagBag parse of the folder)."""
        recorded = self.stack.query(
            "SELECT dag_id, last_parse_duration FROM dag WHERE dag_id IN (%s, %s)", LIVE_DAG, BULK_DAG
        )
        report = self.stack.airflow("dags", "report", "-o", "json", check=False)
        parsed = []
        for line in report.stdout.splitlines():
            if line.startswith("[{"):
                parsed = json.loads(line)
        return {"dag_processor": {dag_id: seconds for dag_id, seconds in recorded}, "dags_report": parsed}

    def glue_job(self) -> dict:
        return self.glue.get_job(JobName=self.config.glue_job_name)["Job"]


#: The steps of a live window in the order they happen, as (label, task or "glue run", "start" or "end").
TIMELINE = (
    ("sensor done", "wait_for_price_record", "end"),
    ("Glue task start", "normalize_price_record", "start"),
    ("Glue run start", "glue run", "start"),
    ("Glue run end", "glue run", "end"),
    ("Glue task end", "normalize_price_record", "end"),
    ("analyse_pairs start", "analyse_pairs", "start"),
    ("analyse_pairs end", "analyse_pairs", "end"),
    ("publish start", "publish_price_alerts", "start"),
    ("publish end", "publish_price_alerts", "end"),
)


def timeline(landed: float, tasks: dict, glue_run: dict, sent: float) -> dict[str, float | None]:
    """Seconds from the record landing to each step of the window's run (task instance start/end times
    from the metadata DB, the Glue job run's own StartedOn/CompletedOn), ending with the SQS SentTimestamp."""
    out: dict[str, float | None] = {}
    for label, task, edge in TIMELINE:
        if task == "glue run":
            moment = glue_run.get("started" if edge == "start" else "completed")
        else:
            moment = tasks.get(task, {}).get(edge)
        out[label] = None if moment is None else moment.timestamp() - landed
    out["alert in SQS"] = sent - landed
    return out


def recorded_requests(text: str):
    """Each request of moto's recording. One JSON object a line, but moto's recorder writes an entry and its
    newline in two calls from the server's many threads, so two entries may share a line (100 parallel
    Publishes did that)."""
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        at = 0
        while at < len(line):
            entry, at = decoder.raw_decode(line, at)
            yield entry
            at = len(line) - len(line[at:].lstrip())


def classify(entry: dict) -> tuple[str, str, str | None]:
    """(service, operation, S3 key or prefix) of one recorded request."""
    headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
    match = _CREDENTIAL_SERVICE.search(headers.get("authorization", ""))
    service = match.group(1) if match else "unknown"
    target = headers.get("x-amz-target")
    if target:
        return service, target.rsplit(".", 1)[-1], None
    url = urlparse(entry["url"])
    query = parse_qs(url.query, keep_blank_values=True)
    if service == "s3":
        path = unquote(url.path).lstrip("/")
        key = path.split("/", 1)[1] if "/" in path else None
        method = entry["method"]
        if method == "GET" and ("list-type" in query or not key):
            return service, "ListObjectsV2", query.get("prefix", [""])[0]
        if method == "PUT" and "x-amz-copy-source" in headers:
            return service, "CopyObject", key
        if method == "PUT" and "tagging" in query:
            return service, "PutObjectTagging", key
        operation = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
        return service, operation.get(method, method), key
    body = entry.get("body") or ""
    if entry.get("body_encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    action = parse_qs(body).get("Action", query.get("Action", ["?"]))[0]
    return service, action, None
