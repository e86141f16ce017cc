"""``make soak``: replay a window range through the real price_notification DAG while AWS calls fail.

A private local stack (stand-in, PostgreSQL, scheduler, dag-processor, triggerer, api-server; temp
state folder, free ports) replays past windows: the feed writes each window's raw record at its
original time, a native backfill (created through the REST API, as the UI does) with
``notify_on_backfill`` runs every window through the DAG while progress is printed, and
the stand-in answers a seeded fraction of the S3, Glue, SNS and CloudWatch Logs calls with
throttling, 500, 503 or a reset connection (local/faults.py). Afterwards the results are checked
against an independent computation of the series, written here in plain Python (none of the
pipeline's own functions):

- every window is analysed: one ledger entry under ``crypto/03-price-changes/``, comparing the right
  previous price, with the expected decision;
- every breach is notified exactly once (the alert topic's SQS subscriber), nothing else is notified;
- no raw object is lost or altered, no analysis CSV is missing, nothing is quarantined.

    python -m local.soak [--windows 288] [--first 2017-07-16T00:00] [--faults all=0.2] [--seed 7]

Exit code 0 when every check holds. The kill tests (tests/integration/test_kill.py) share the helpers
for finding and killing task processes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from local import faults
from local.api import Api, backfill_when_free
from local.api import wait_for_backfill as wait_until_complete
from local.stack import ROOT, Stack, isolated

DAG_ID = "price_notification"
DATA_FILE = ROOT / "tests" / "data" / "poloniex" / "poloniex_BTC_ETH_5m_2017-07-14_2017-08-09.csv"
DEFAULT_FIRST = datetime(2017, 7, 16, tzinfo=UTC)  # a volatile day: 29 breaches of 1 % in 288 windows
DEFAULT_FAULTS = "s3=0.2,glue=0.2,sns=0.2,logs=0.2"
SLOT = timedelta(minutes=5)
THRESHOLD_PCT = 1.0  # the DAG's default params, restated: the check does not read the project's values
LOOKBACK = timedelta(minutes=60)
BUCKET = "price-notification-local"
DEFAULT_PAIR = "ETH/USDT"  # the project's default pair, restated
RAW, ANALYSIS, LEDGER, QUARANTINE = (
    "crypto/01-data-ingestion/",
    "crypto/02-data-analysis/",
    "crypto/03-price-changes/",
    "crypto/99-quarantine/",
)
_STAMP = re.compile(r"(\d{8}T\d{4}Z)")
_WINDOW_LINE = re.compile(r"^Window:\s+(\S+) to", re.MULTILINE)
#: An ops incident's message subjects (README "Ops incidents"), restated: opened, reminded, resolved.
_INCIDENT = re.compile(
    r"^\[price pipeline\] (?:(?P<reminded>Still )|(?P<resolved>Resolved, )|"
    r"(?P<opened>(?:Feed stale|Feed problem|Pair late|Record quarantined|Alert claim left|Task failed): ))"
)


def incident_event(subject: str) -> str | None:
    """``opened``, ``reminded`` or ``resolved`` for an ops incident's message, None for another."""
    found = _INCIDENT.match(subject)
    return found.lastgroup if found else None


# ---------------------------------------------------------------------------------- the series


def load_rows(path: Path, first: datetime, windows: int) -> list[dict]:
    """The Poloniex rows whose candles start in ``[first, first + windows * 5 min)``, in time order."""
    start, end = first.timestamp(), (first + windows * SLOT).timestamp()
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if start <= int(row["date"]) < end]
    return sorted(rows, key=lambda row: int(row["date"]))


def expected_series(rows: list[dict], threshold_pct: float = THRESHOLD_PCT, lookback: timedelta = LOOKBACK) -> dict:
    """Per window start (ISO, Z): the previous window start it must be compared with (or None), the
    signed % change and whether it breaches. Only the replayed rows exist in the bucket."""
    expected, before = {}, None
    for row in rows:
        moment = datetime.fromtimestamp(int(row["date"]), tz=UTC)
        price = float(row["weightedAverage"])
        previous = change = None
        if before is not None and moment - before[0] <= lookback:
            previous = _iso(before[0])
            change = (price - before[1]) / before[1] * 100.0
        expected[_iso(moment)] = {
            "previous": previous,
            "change_pct": change,
            "breach": change is not None and abs(change) > threshold_pct,
            "price": price,
        }
        before = (moment, price)
    return expected


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csv_price(body: bytes) -> float | None:
    """The ``weighted_average`` of a canonical CSV object (header and one row), read with the csv module."""
    rows = list(csv.DictReader(body.decode("utf-8").splitlines()))
    return float(rows[0]["weighted_average"]) if len(rows) == 1 else None


def _window_of_key(key: str) -> str | None:
    """The window start (ISO) named by a key's ``YYYYMMDDTHHMMZ`` stamp."""
    stamps = _STAMP.findall(key)
    if not stamps:
        return None
    return _iso(datetime.strptime(stamps[-1], "%Y%m%dT%H%MZ").replace(tzinfo=UTC))


# --------------------------------------------------------------------------------------- stack


def soak_stack(state_dir: Path, extra_env: dict[str, str] | None = None, seed: int = 0, **settings) -> Stack:
    """A private stack: free ports, no scheduled (cron) runs so only the runs a test creates exist."""
    return isolated(
        state_dir,
        extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False", **(extra_env or {})},
        standin_args=("--fault-seed", str(seed)),
        **settings,
    )


def start_stack(stack: Stack) -> Api:
    """Stand-in, database and every Airflow component; the DAG unpaused. Returns the logged-in API."""
    stack.start(unpause=(DAG_ID,))
    return Api(stack)


def aws_clients(stack: Stack) -> dict:
    """S3, SQS and Glue clients on the stack's stand-in, exempt from faults (the harness reads truth)."""
    return {name: faults.exempt(stack.client(name)) for name in ("s3", "sqs", "glue")}


def write_records(s3, rows: list[dict]) -> list[str]:
    """Write each row as its window's raw record (formats rotate as in local/feed.py); return the keys."""
    from local.feed import write_record

    rows = ({k: float(v) if k != "date" else int(v) for k, v in row.items()} for row in rows)
    return [write_record(s3, BUCKET, row, pair=DEFAULT_PAIR) for row in rows]


def wait_for_backfill(stack: Stack, backfill_id: int, timeout: float, report=None) -> dict[str, int]:
    """Block until the scheduler completes the backfill (``report`` gets progress lines); return
    ``{state: runs}``."""
    wait_until_complete(stack, {"id": backfill_id}, timeout, report=report or (lambda line: None))
    return dict(stack.query("SELECT state, count(*) FROM dag_run WHERE backfill_id = %s GROUP BY state", backfill_id))


def receive_all(sqs, queue_url: str, wait_seconds: int = 1) -> list[dict]:
    """Every SNS envelope waiting in an SQS queue (removed from it); the last, empty receive waits
    ``wait_seconds`` (0: the stand-in delivers within the Publish call, so one empty short poll is an empty
    queue, as ``make run``'s printing loop reads it)."""
    out = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds).get(
        "Messages", []
    ):
        for message in got:
            out.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return out


def queue_url(sqs, topic: str) -> str:
    """The subscriber queue of ``topic`` (``price-alerts`` or ``price-pipeline-ops``)."""
    return sqs.get_queue_url(QueueName=f"{topic}-inbox")["QueueUrl"]


def snapshot(s3, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes."""
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def alert_windows(alerts: list[dict]) -> Counter:
    """How many alerts each window (its ``Window:`` line) received."""
    return Counter(match.group(1) for alert in alerts if (match := _WINDOW_LINE.search(alert.get("Message", ""))))


# -------------------------------------------------------------------------------------- report


@dataclass
class SoakReport:
    """What a soak found; ``ok`` when every guarantee held."""

    windows_expected: int
    breaches_expected: int
    analysed: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_ledger: list[str] = field(default_factory=list)
    notified: int = 0
    duplicates: int = 0
    not_notified: list[str] = field(default_factory=list)
    unexpected_alerts: list[str] = field(default_factory=list)
    lost_objects: list[str] = field(default_factory=list)
    missing_analysis: list[str] = field(default_factory=list)
    altered_analysis: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    task_tries: dict[str, int] = field(default_factory=dict)
    ops_notifications: int = 0
    #: Ops incident messages seen ({"opened": n, ...}) and expected: a backfill opens none (README "Ops incidents").
    incident_messages: dict[str, int] = field(default_factory=dict)
    incident_messages_expected: dict[str, int] = field(default_factory=dict)
    glue_runs: int = 0
    faults: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.wrong_ledger
            or self.duplicates
            or self.not_notified
            or self.unexpected_alerts
            or self.lost_objects
            or self.missing_analysis
            or self.altered_analysis
            or self.quarantined
            or self.incident_messages != self.incident_messages_expected
        )

    def lines(self) -> list[str]:
        """The human summary."""
        injected = sum(self.faults.get("faults", {}).values())
        calls = sum(self.faults.get("calls", {}).values())
        by_kind = Counter()
        for key, count in self.faults.get("faults", {}).items():
            by_kind[key.split(":", 1)[1]] += count
        return [
            f"windows expected   {self.windows_expected}",
            f"windows analysed   {self.analysed}  (missing {len(self.missing)}, wrong ledger entry "
            f"{len(self.wrong_ledger)})",
            f"breaches expected  {self.breaches_expected}",
            f"notified           {self.notified}  (duplicates {self.duplicates}, not notified "
            f"{len(self.not_notified)}, unexpected {len(self.unexpected_alerts)})",
            f"lost objects       {len(self.lost_objects)}  (raw lost/altered; analysis CSVs missing "
            f"{len(self.missing_analysis)}, altered {len(self.altered_analysis)}; quarantined {len(self.quarantined)})",
            f"faults injected    {injected} of {calls} AWS calls ({dict(by_kind)}; "
            f"per service {self.faults.get('calls', {})})",
            f"dag runs           {self.runs}; task tries {self.task_tries}; Glue runs {self.glue_runs}; "
            f"ops notifications {self.ops_notifications}",
            f"ops incidents      {self.incident_messages or 'none'} "
            f"(expected {self.incident_messages_expected or 'none'})",
            f"elapsed            {self.seconds:.0f} s",
            "RESULT             " + ("OK" if self.ok else "FAILED"),
        ]


def check(expected: dict, ledger: dict[str, dict], alerts: list[dict], raw_before: dict, raw_after: dict,
          analysis: dict[str, bytes], quarantine_keys: list[str]) -> SoakReport:  # fmt: skip
    """Compare what the pipeline left with the independent expectation."""
    breaches = {window for window, item in expected.items() if item["breach"]}
    report = SoakReport(windows_expected=len(expected), breaches_expected=len(breaches))
    for window, item in expected.items():
        entry = ledger.get(window)
        if entry is None:
            report.missing.append(window)
            continue
        report.analysed += 1
        previous = (entry.get("previous") or {}).get("timestamp")
        decided_breach = entry.get("decision") == "notified"
        same_change = (entry.get("change_pct") is None) == (item["change_pct"] is None) and (
            item["change_pct"] is None or abs(entry["change_pct"] - item["change_pct"]) < 1e-9
        )
        if previous != item["previous"] or decided_breach != item["breach"] or not same_change:
            report.wrong_ledger.append(window)
    counts = alert_windows(alerts)
    report.notified = len(set(counts) & breaches)
    report.duplicates = sum(count - 1 for count in counts.values() if count > 1)
    report.not_notified = sorted(breaches - set(counts))
    report.unexpected_alerts = sorted(set(counts) - breaches)
    report.lost_objects = sorted(key for key, body in raw_before.items() if raw_after.get(key) != body)
    canonical = {_window_of_key(key): _csv_price(body) for key, body in analysis.items()}
    report.missing_analysis = sorted(set(expected) - set(canonical))
    report.altered_analysis = sorted(
        window for window, item in expected.items() if window in canonical and canonical[window] != item["price"]
    )
    report.quarantined = sorted(quarantine_keys)
    return report


def run_soak(
    windows: int = 288,
    first: datetime = DEFAULT_FIRST,
    fault_spec: str = DEFAULT_FAULTS,
    seed: int = 7,
    data_file: Path = DATA_FILE,
    max_active_runs: int = 16,
    timeout: float = 4 * 3600,
    state_dir: Path | None = None,
    log=print,
) -> SoakReport:
    """Run one soak and return its report (the stack is stopped; its state folder removed unless given)."""
    started = time.monotonic()
    rows = load_rows(data_file, first, windows)
    if len(rows) != windows:
        raise ValueError(f"{data_file} holds {len(rows)} of the {windows} windows from {_iso(first)}")
    expected = expected_series(rows)
    keep = state_dir is not None
    state_dir = Path(state_dir or tempfile.mkdtemp(prefix="price-soak-"))
    stack = soak_stack(state_dir, seed=seed)
    try:
        log(f"soak: {windows} windows from {_iso(first)}, faults {fault_spec!r} seed {seed}, state {state_dir}")
        api = start_stack(stack)
        aws = aws_clients(stack)
        write_records(aws["s3"], rows)
        raw_before = snapshot(aws["s3"], RAW)
        faults.set_faults(stack.standin_url, fault_spec, seed)
        backfill = backfill_when_free(
            stack, api, first, first + (windows - 1) * SLOT, notify=True, max_active_runs=max_active_runs
        )
        log(f"soak: backfill {backfill['id']} created over {windows} windows")
        runs = wait_for_backfill(stack, backfill["id"], timeout, report=lambda line: log(f"soak: {line}"))
        fault_counts = faults.fault_state(stack.standin_url)
        faults.set_faults(stack.standin_url, "off")
        ledger = {_window_of_key(key): default_entry(body) for key, body in snapshot(aws["s3"], LEDGER).items()}
        ledger = {window: entry for window, entry in ledger.items() if entry is not None}
        alerts = receive_all(aws["sqs"], queue_url(aws["sqs"], "price-alerts"))
        report = check(
            expected,
            ledger,
            alerts,
            raw_before,
            snapshot(aws["s3"], RAW),
            snapshot(aws["s3"], ANALYSIS),
            list(snapshot(aws["s3"], QUARANTINE)),
        )
        report.runs = runs
        backfill_id = backfill["id"]
        report.task_tries = dict(
            stack.query(
                "SELECT task_id, sum(try_number) FROM task_instance WHERE run_id IN "
                "(SELECT run_id FROM dag_run WHERE backfill_id = %s) GROUP BY task_id",
                backfill_id,
            )
        )
        ops = receive_all(aws["sqs"], queue_url(aws["sqs"], "price-pipeline-ops"))
        report.ops_notifications = len(ops)
        report.incident_messages = dict(Counter(filter(None, (incident_event(m["Subject"]) for m in ops))))
        report.glue_runs = len(glue_runs(aws["glue"]))
        report.faults = fault_counts
        report.seconds = time.monotonic() - started
        return report
    finally:
        stack.stop()
        if not keep:
            shutil.rmtree(state_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- task processes


def backfill_window(stack: Stack, api: Api, window_start: datetime, notify: bool = True) -> str:
    """A one-window backfill of the window starting at ``window_start``; returns its run id.

    (A manual trigger without an explicit data interval cannot aim at a past window: its interval
    comes from the time it is triggered.)"""
    backfill = backfill_when_free(stack, api, window_start, window_start, notify, report=lambda line: None)
    [(run_id, start)] = stack.query(
        "SELECT run_id, data_interval_start FROM dag_run WHERE backfill_id = %s", backfill["id"]
    )
    if start != window_start:
        raise AssertionError(f"run {run_id} covers the window from {start}, not {window_start}")
    return run_id


def task_instance(stack: Stack, run_id: str, task_id: str) -> tuple[str, int, str | None] | None:
    """``(ti id, try number, state)`` of one task of a run, or None before it exists."""
    rows = stack.query(
        "SELECT id, try_number, state FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s",
        DAG_ID,
        run_id,
        task_id,
    )
    return rows[0] if rows else None


def run_state(stack: Stack, run_id: str) -> str | None:
    rows = stack.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", DAG_ID, run_id)
    return rows[0][0] if rows else None


def wait_for(condition, timeout: float = 600, what: str = "condition", stack: Stack | None = None):
    """Poll ``condition`` until it returns something truthy and return that; meanwhile check the
    stack's processes are alive. Raises TimeoutError after ``timeout`` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        for name in stack.processes if stack else ():
            stack._check_alive(name)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout:.0f}s")
        time.sleep(0.5)
    return result


def glue_runs_by_window(glue, job_name: str = "price-normalize-record") -> Counter:
    """How many Glue job runs were started for each window (its ``--window_start`` argument)."""
    return Counter(run.get("Arguments", {}).get("--window_start") for run in glue_runs(glue, job_name))


def ledger_entry(s3, window_start: datetime) -> dict | None:
    """The default pair's entry of the window, read by its documented key (the window's ledger object, a
    JSON line per pair) and flattened (:func:`flat_entry`), or None."""
    key = f"{LEDGER}year={window_start:%Y}/month={window_start:%m}/day={window_start:%d}/{window_start:%Y%m%dT%H%MZ}"
    try:
        body = s3.get_object(Bucket=BUCKET, Key=f"{key}/pairs.jsonl")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return default_entry(body)


def default_entry(body: bytes) -> dict | None:
    """The default pair's line of a window's ledger object, flattened: its one rule's fields beside the
    entry's (``previous``: the rule's reference), the decision the entry's claim (``publishing``,
    ``notified``) or else the rule's."""
    for line in body.decode().splitlines():
        entry = json.loads(line)
        if entry.get("pair") == DEFAULT_PAIR:
            [state] = entry["rules"].values()
            claimed = entry["decision"] in ("publishing", "notified")
            return {**entry, **state, "previous": state.get("reference"),
                    "decision": entry["decision"] if claimed else state["decision"]}  # fmt: skip
    return None


def glue_runs(glue, job_name: str = "price-normalize-record") -> list[dict]:
    """Every run of the Glue job the stand-in knows (newest first)."""
    runs, token = [], None
    while True:
        page = glue.get_job_runs(JobName=job_name, **({"NextToken": token} if token else {}))
        runs += page["JobRuns"]
        token = page.get("NextToken")
        if not token:
            return runs


def task_runner_pids(stack: Stack, ti_id: str) -> list[int]:
    """PIDs of the task runner processes of task instance ``ti_id`` under the stack's scheduler.

    The LocalExecutor's workers are the scheduler's children; each supervises a task runner child
    whose process title is ``airflow worker -- <ti id>`` (dashes and all)."""
    import psutil

    scheduler = stack.processes.get("scheduler")
    if scheduler is None:
        return []
    wanted = ti_id.replace("-", "")  # the database keeps it without dashes, the title with them
    found = []
    for process in psutil.Process(scheduler.pid).children(recursive=True):
        try:
            title = " ".join(part for part in process.cmdline() if part)
        except psutil.Error:
            continue
        if title.startswith("airflow worker -- ") and title.split(" -- ", 1)[1].replace("-", "") == wanted:
            found.append(process.pid)
    return found


def kill_task_runner(stack: Stack, ti_id: str) -> int:
    """SIGKILL the task runner of ``ti_id`` (as the OOM killer or a lost host would); return its PID."""
    pids = task_runner_pids(stack, ti_id)
    if len(pids) != 1:
        raise LookupError(f"expected one task runner for {ti_id}, found {pids}")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


# ----------------------------------------------------------------------------------------- CLI


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=int(os.environ.get("SOAK_WINDOWS", "288")))
    parser.add_argument("--first", default=_iso(DEFAULT_FIRST), help="first window start, UTC")
    parser.add_argument("--faults", default=os.environ.get("SOAK_FAULTS", DEFAULT_FAULTS), help="local/faults.py spec")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="Poloniex-format CSV to replay")
    parser.add_argument("--max-active-runs", type=int, default=16)
    parser.add_argument("--state-dir", type=Path, help="keep the stack's state here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    faults.parse_spec(args.faults)  # fail fast on a bad spec
    first = datetime.fromisoformat(args.first.replace("Z", "+00:00"))
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the stack on `kill` as on Ctrl-C
    report = run_soak(
        args.windows, first, args.faults, args.seed, args.data, args.max_active_runs, state_dir=args.state_dir
    )
    print("\n".join(report.lines()), flush=True)
    for name in (
        "missing",
        "wrong_ledger",
        "not_notified",
        "unexpected_alerts",
        "lost_objects",
        "missing_analysis",
        "altered_analysis",
        "quarantined",
    ):
        if getattr(report, name):
            print(f"{name}: {getattr(report, name)[:20]}")
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1, sort_keys=True) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
