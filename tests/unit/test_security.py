"""Security checks that run with ``make test``.

- bandit over dags/ include/ plugins/ local/: no medium or high finding, unless explained inline as
  ``# nosec BXXX - reason`` in the owner's file;
- detect-secrets over the tree: nothing beyond the audited ``.secrets.baseline``, and nothing in the
  baseline marked as a real secret;
- hostile input through the real Glue job on the stand-in: XML external entities (a local file, a
  DTD fetched over HTTP), billion laughs, and raw keys that try to climb out of their prefix, all at
  once in one window: nothing is read, fetched or written outside the window's analysis and
  quarantine keys (the parser-level cases are in test_glue_hostile.py and test_layout.py);
- ``make run``: UI and stand-in on 127.0.0.1 only, the UI behind SimpleAuthManager's login (not
  all-admins mode), and the console says where the generated password is kept.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.price_pipeline import layout
from local.feed import render
from local.postgres import Postgres
from local.stack import ROOT, SIMPLE_AUTH_MANAGER, Stack
from tests.records import candle

BANDIT_TARGETS = [name for name in ("dags", "include", "plugins", "local") if (ROOT / name).is_dir()]
BASELINE = ROOT / ".secrets.baseline"
MALFORMED = ROOT / "tests" / "data" / "formats" / "malformed"


# ----------------------------------------------------------------------------------------- bandit


def test_bandit_finds_no_medium_or_high_issue_that_is_not_explained_inline():
    done = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", "pyproject.toml", "-r", *BANDIT_TARGETS, "-f", "json", "-ll", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(done.stdout)

    assert report["errors"] == []
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert findings == []
    assert report["metrics"]["_totals"]["loc"] > 1000  # it did scan the code


def test_every_nosec_names_the_check_it_silences_and_says_why():
    unexplained = []
    for target in BANDIT_TARGETS:
        for path in sorted((ROOT / target).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "nosec" in line and not re.search(r"#\s*nosec\s+B\d{3}(,\s*B\d{3})*\s+-\s+\S", line):
                    unexplained.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")

    assert unexplained == []


# ---------------------------------------------------------------------------------------- secrets


def tree_files() -> list[str]:
    """Every file git tracks or would track (ignored ones, such as .venv/, left out), but the baseline
    (it holds the hashes of what it lists)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = set(listed.split("\0")) - {"", BASELINE.name}
    return sorted(name for name in names if (ROOT / name).is_file())


def test_no_secret_in_the_tree_beyond_the_audited_baseline(monkeypatch):
    from detect_secrets.core import baseline
    from detect_secrets.core.secrets_collection import SecretsCollection

    monkeypatch.chdir(ROOT)  # the baseline names files relative to the repository
    known = baseline.load(baseline.load_from_file(str(BASELINE)), str(BASELINE))
    found = SecretsCollection()
    for name in tree_files():  # in this process: scan_files forks a pool, and a fork of a threaded
        found.scan_file(name)  # process (a pytest-xdist worker after the dag.test() tests) can hang

    new = [f"{name}:{secret.line_number} {secret.type}" for name, secret in (found - known)]
    assert new == [], "new secrets: remove them, or audit them into .secrets.baseline (see docs/reliability.md)"


def test_the_baseline_holds_only_audited_false_positives():
    results = json.loads(BASELINE.read_text())["results"]

    entries = [(name, entry) for name, items in results.items() for entry in items]
    assert entries, "the baseline lists the moto test credentials"
    assert [f"{name}:{entry['line_number']}" for name, entry in entries if entry.get("is_secret") is not False] == []


# ---------------------------------------------------------------------- hostile input, end to end


class _Listener(http.server.BaseHTTPRequestHandler):
    """Counts every request: an XML parser that fetches a DTD or an entity would show up here."""

    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Listener.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'<!ENTITY leak "fetched">')

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Listener.hits = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.integration
def test_hostile_objects_through_the_real_glue_job_read_fetch_and_write_nothing_outside_the_window(
    aws, listener, tmp_path
):
    slot = datetime(2024, 2, 29, 23, 55, tzinfo=UTC)  # a day no other test uses
    prefix = layout.ingestion_window_prefix(slot)
    canary = tmp_path / "canary.txt"
    canary.write_text(f"canary-{uuid.uuid4().hex}")
    named = {**candle(slot, 2500.0), "pair": "../../crypto/03-price-changes/evil"}  # quarantined: not our pair
    hostile = {
        # the key grammar: "<slot>" then "." or "-" and no "/" (or "<slot>/<BASE>_<QUOTE>..."); the
        # first, second and fourth are outside it, quarantined unread
        prefix + "../../../etc/passwd.json": render(candle(slot, 2500.0), "json"),
        prefix + "-x/../../crypto/03-price-changes/evil.json": render(named, "json"),
        prefix + "..%2F..%2Fcrypto%2F02-data-analysis%2Fevil.csv": render(candle(slot, 2500.0), "csv"),
        prefix + "\\..\\..\\evil.xml": (
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{canary}">]>'
            f"<record><date>{int(slot.timestamp())}</date><weightedAverage>&x;</weightedAverage></record>"
        ).encode(),
        prefix + ".dtd.xml": f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "{listener}/evil.dtd"><r>1</r>'.encode(),
        prefix + ".param.xml": (
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "{listener}/p.dtd"> %p;]><r>&leak;</r>'
        ).encode(),
        prefix + ".lol.xml": (MALFORMED / "xml_billion_laughs.xml").read_bytes(),
    }
    before = set(aws.keys("crypto/")) | set(aws.keys("artifacts/"))
    for key, body in hostile.items():
        aws.put(key, body)

    run = aws.run_real_glue_job({"--window_start": slot.strftime("%Y-%m-%dT%H:%M:%SZ")})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    written = (set(aws.keys("crypto/")) | set(aws.keys("artifacts/"))) - before - set(hostile)
    quarantine_dir = f"{layout.QUARANTINE_PREFIX}{layout.partition(slot)}{layout.slot_stamp(slot)}/"
    outside = [
        key
        for key in written
        if key != layout.analysis_key(slot)
        and not key.startswith(quarantine_dir)
        and not key.startswith(layout.GLUE_SCRIPTS_PREFIX)
    ]
    assert outside == []
    assert layout.analysis_key(slot) in written  # the good records still got through
    quarantined = [json.loads(aws.get(k)) for k in written if k.endswith(".reason.json")]
    reasons = {q["source_key"]: q["reason"] for q in quarantined}
    assert sorted(reasons) == sorted(k for k in hostile if k.endswith((".xml", ".json")))
    outside_grammar = [prefix + "../../../etc/passwd.json", prefix + "-x/../../crypto/03-price-changes/evil.json"]
    outside_grammar.append(prefix + "\\..\\..\\evil.xml")
    assert all(reasons[k].startswith("key does not follow the ingestion key grammar") for k in outside_grammar)
    assert all("XML refused" in reasons[k] for k in hostile if k.endswith(".xml") and k not in outside_grammar)
    assert _Listener.hits == []  # no DTD or entity was fetched
    secret = canary.read_text().encode()
    assert [key for key in written if secret in aws.get(key)] == []  # the local file was never read


# ----------------------------------------------------------------------------------------- make run


def test_make_run_binds_the_ui_to_loopback_behind_simple_auth_manager_login(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", raising=False)
    stack = Stack(state_dir=tmp_path)

    env = stack.env()

    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__BASE_URL"].startswith("http://127.0.0.1:")
    assert stack.standin_url.startswith("http://127.0.0.1:")
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == SIMPLE_AUTH_MANAGER
    assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "false").strip().lower() in ("", "false", "0")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"  # user admin, role admin
    assert (tmp_path / "airflow" / "jwt_secret").stat().st_mode & 0o077 == 0  # the JWT secret is private


def test_make_run_keeps_the_login_even_if_the_shell_asks_for_all_admins(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "true")

    env = Stack(state_dir=tmp_path).env()

    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"].lower() == "false"


@pytest.mark.integration
def test_the_stand_in_listens_on_loopback_only_by_default(standin):
    import psutil

    port = int(standin.rsplit(":", 1)[1])
    addresses = {
        c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port
    }

    assert addresses == {"127.0.0.1"}


class FakeStack:
    """Stands in for local.stack.Stack in local.run.main: records calls, starts nothing."""

    def __init__(self, tmp_path: Path, **kwargs):
        self.kwargs = kwargs
        self.standin_url, self.ui_url = "http://127.0.0.1:4566", "http://127.0.0.1:8080"
        self.logs = tmp_path / "logs"
        self.passwords_file = tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated"
        self.postgres = Postgres(tmp_path / "postgres")

    def admin_password(self) -> str:
        return "generated-password"

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_make_run_prints_where_the_generated_password_is_kept(tmp_path, monkeypatch, capsys):
    from local import run

    monkeypatch.setattr(run, "Stack", lambda **kwargs: FakeStack(tmp_path, **kwargs))
    monkeypatch.setattr(run, "Api", lambda stack: None)
    monkeypatch.setattr(run, "backfill_history", lambda api, windows, log=print: None)
    monkeypatch.setattr(run, "watch_notifications", lambda stack, should_stop, subscriptions: None)
    monkeypatch.setattr(run.signal, "signal", lambda *args: None)

    run.main()

    out = capsys.readouterr().out
    assert "http://127.0.0.1:8080" in out
    assert str(tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated") in out
