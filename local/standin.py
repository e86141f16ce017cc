"""Local AWS stand-in: moto server on loopback, plus a Glue runner that really runs the job script.

moto answers S3, SNS, SQS, IAM, Glue and CloudWatch Logs, but marks every Glue job run SUCCEEDED
without running anything. Here StartJobRun also starts a runner thread that:

1. takes the job's script from the stand-in's own S3 (``Command.ScriptLocation``); a script whose bytes
   are not those of ``include/glue/normalize_price_record.py`` as read at start (or of a file of
   ``--test-glue-scripts``) is not run: the run FAILS with a one-line ``ErrorMessage``,
2. takes each zip of the ``--extra-py-files`` argument from its S3 too, under the same rule: only the
   project's own bundle (``glue_bundle.bundle()`` as built at start; provisioning uploads it to
   ``glue_bundle.KEY``) is accepted,
3. runs the script in a subprocess with the job's default arguments merged with the run's arguments, the
   zips as its only ``PYTHONPATH`` (as Glue puts them on the job's path: the job imports its package from
   the bundle, not from the repository), and an environment pointing boto3 at the stand-in,
4. reports RUNNING, then SUCCEEDED, FAILED (with the script's last error line as ``ErrorMessage``),
   or TIMEOUT past the run's (or job's) timeout,
5. stores stdout and stderr as the CloudWatch log streams ``<run id>`` in
   ``/aws-glue/python-jobs/output`` and ``/aws-glue/python-jobs/error``, which the Airflow provider
   reads to stream Glue output into the task log.

Who may call it: only requests signed (SigV4, the signature recomputed here, not just the key id) with
the credentials generated for its state folder (``--state-dir``, default ``.local``: the file
``aws-standin-credentials.json``, 0600 from its creation; :func:`credentials` makes and reads it, and
every client of the stack gets them). Any other request to S3, Glue, SNS, SQS, IAM, Logs or moto's own
``/moto-api/`` is answered 403 with an AWS error body before moto sees it: made-up or other credentials,
a wrong signature, a body other than the signed one, no signature, presigned URLs (query-string
signatures: none of the stack's clients uses one). Only ``/_standin/faults`` and ``/_standin/s3-index``
(below) answer unsigned.

It also provisions, idempotently, what the pipeline expects: the bucket, the alert and ops SNS
topics, one SQS queue subscribed to each (so notifications can be read back), one more on the alert topic
for each subscription of ``--subscriptions FILE`` (local/subscriptions.py), the Glue role and the Glue
job's bundle (Terraform's part on AWS).

S3 listings answer from a sorted index of each bucket's key names (local/s3index.py), so listing a
prefix costs what it returns, not the size of the bucket, as on S3; ``GET /_standin/s3-index`` shows,
per bucket, how many keys it holds and how many listings have walked.

Faults (off by default, see local/faults.py for the SPEC format): ``--faults SPEC`` makes a seeded
fraction of S3, Glue, SNS and CloudWatch Logs calls fail (throttling, 500, 503, connection reset) or
wait, before moto sees them; ``POST /_standin/faults`` switches them at runtime. The runner's own
script download and log writing are exempt; the job script's boto3 calls are not.

Run: ``python -m local.standin --host 127.0.0.1 --port 4566 [--state-dir .local] [--faults SPEC --fault-seed N]``.
Stop with SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import boto3
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from moto.glue import models as glue_models
from moto.glue.exceptions import GlueClientError
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from include.price_pipeline import glue_bundle, layout, settings
from local import faults, s3index, subscriptions
from local.stack import write_secret

log = logging.getLogger("standin")
log_werkzeug = logging.getLogger("werkzeug")

LOG_GROUP = "/aws-glue/python-jobs"
REGION = settings.LOCAL_REGION
CREDENTIALS_FILE = "aws-standin-credentials.json"
DEFAULT_STATE_DIR = Path(__file__).resolve().parents[1] / ".local"  # make run's (local/stack.py)


def credentials(state_dir: Path) -> Credentials:
    """The only credentials the stand-in of ``state_dir`` accepts: generated on first use into a file
    private from its creation (``<state_dir>/aws-standin-credentials.json``), read from it afterwards."""
    path = Path(state_dir) / CREDENTIALS_FILE
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = {"access_key_id": "LOCAL" + secrets.token_hex(8).upper(), "secret_access_key": secrets.token_urlsafe(30)}
        write_secret(path, json.dumps(key))
    key = json.loads(path.read_text())
    return Credentials(key["access_key_id"], key["secret_access_key"])


def endpoint(host: str, port: int) -> str:
    """The URL boto3 clients use to reach the stand-in."""
    wildcard = host in ("0.0.0.0", "::")  # noqa: S104  # nosec B104 - a comparison for clients; binds nothing
    return f"http://{'127.0.0.1' if wildcard else host}:{port}"


def client(service: str, url: str, key: Credentials):
    """A boto3 client for ``service`` on the stand-in at ``url``, signing with ``key`` (:func:`credentials`)."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key.access_key,
        aws_secret_access_key=key.secret_key,
    )


def internal_client(service: str, url: str, key: Credentials):
    """A client for the stand-in's own calls to itself: never faulted (it is the simulated AWS)."""
    return faults.exempt(client(service, url, key))


def aws_env(url: str, key: Credentials) -> dict[str, str]:
    """The environment that points a process's boto3 at the stand-in with ``key``."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": key.access_key,
        "AWS_SECRET_ACCESS_KEY": key.secret_key,
        "AWS_DEFAULT_REGION": REGION,
    }


def signed_headers(method: str, url: str, key: Credentials, body: bytes = b"") -> dict[str, str]:
    """The headers of a request signed with ``key`` (SigV4, as S3's), for a call made without boto3."""
    request = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(key, "s3", REGION).add_auth(request)
    return dict(request.headers.items())


def queue_name(topic_arn: str) -> str:
    """The SQS queue subscribed to ``topic_arn``: the topic name plus ``-inbox``."""
    return f"{topic_arn.rsplit(':', 1)[-1]}-inbox"


# ------------------------------------------------------------------------------------ Glue runner


@dataclass
class RunOutcome:
    """What the runner reports for one job run (read by the patched ``FakeJobRun.as_dict``)."""

    state: str = "RUNNING"
    error: str | None = None
    completed_on: datetime | None = None
    execution_seconds: int = 0


class IdempotentParameterMismatchException(GlueClientError):
    def __init__(self, name: str):
        super().__init__("IdempotentParameterMismatchException", f"Job {name} already exists with another definition")


class NotOurScript(Exception):
    """A job run's script, or a zip of its ``--extra-py-files``, is not one the runner runs."""


class GlueRunner:
    """Runs a Glue Python shell job's script for each StartJobRun on the stand-in: only the project's own
    script (``include/glue/normalize_price_record.py`` as read at start) and the ``test_scripts``, with
    only the project's own bundle (``glue_bundle.bundle()`` as built at start) on its path."""

    def __init__(
        self,
        url: str,
        key: Credentials,
        python: str,
        minute_seconds: float,
        injector: faults.FaultInjector | None = None,
        startup_seconds: float = 0,
        test_scripts: Path | None = None,
    ):
        self.url = url
        self.key = key
        # Read once, now: a run whose script object differs runs nothing (another user could otherwise
        # run code as the stack's user through StartJobRun).
        self.scripts = {layout.GLUE_SCRIPT_PATH.read_bytes()}
        self.bundle = glue_bundle.bundle()
        if test_scripts is not None:
            self.scripts |= {path.read_bytes() for path in Path(test_scripts).glob("*.py")}
        self.python = python
        self.minute_seconds = minute_seconds  # seconds per Glue "timeout minute" (tests shrink it)
        self.startup_seconds = startup_seconds  # every run stays RUNNING this long before its script starts
        self.injector = injector  # its glue_startup_ms keeps runs RUNNING before the script starts
        self.outcomes: dict[str, RunOutcome] = {}
        self.threads: list[threading.Thread] = []

    def install(self) -> None:
        """Patch moto's Glue backend so runs execute and report real states, and CreateJob is Glue's."""
        runner = self
        original_create = glue_models.GlueBackend.create_job
        original_start = glue_models.GlueBackend.start_job_run
        original_as_dict = glue_models.FakeJobRun.as_dict
        create_lock = threading.Lock()

        def create_job(backend, name, *args, **kwargs):
            # Glue's CreateJob is idempotent: the same definition again keeps the job and its runs, another
            # one is refused. moto replaces the job and drops its runs, so two tasks creating the job at
            # once (a backfill's first windows) lost the first task's run ("Job run ... not found").
            with create_lock:
                existing = backend.jobs.get(name)
                if existing is None:
                    original_create(backend, name, *args, **kwargs)
                    backend.jobs[name].standin_definition = (args, kwargs)
                elif getattr(existing, "standin_definition", None) != (args, kwargs):
                    raise IdempotentParameterMismatchException(name)

        def start_job_run(backend, name, arguments, *args, **kwargs):
            run_id = original_start(backend, name, arguments, *args, **kwargs)
            job = backend.get_job(name)
            run = job.get_job_run(run_id)
            runner.start(job, run)
            return run_id

        def as_dict(run):
            data = original_as_dict(run)
            outcome = runner.outcomes.get(run.job_run_id)
            if outcome is not None:
                data["JobRunState"] = outcome.state
                data["LogGroupName"] = LOG_GROUP
                data["ExecutionTime"] = outcome.execution_seconds
                data.pop("CompletedOn", None)
                if outcome.completed_on is not None:
                    data["CompletedOn"] = outcome.completed_on
                if outcome.error:
                    data["ErrorMessage"] = outcome.error
            return data

        glue_models.GlueBackend.create_job = create_job
        glue_models.GlueBackend.start_job_run = start_job_run
        glue_models.FakeJobRun.as_dict = as_dict

    def start(self, job, run) -> None:
        """Record the run as RUNNING and execute it in a thread."""
        self.outcomes[run.job_run_id] = RunOutcome()
        arguments = {**(job.default_arguments or {}), **(run.arguments or {})}
        timeout_minutes = run.timeout or job.timeout or 2880
        thread = threading.Thread(
            target=self._execute,
            args=(run.job_run_id, job.name, job.command["ScriptLocation"], arguments, timeout_minutes),
            name=f"glue-{run.job_run_id[:12]}",
            daemon=True,
        )
        self.threads.append(thread)
        thread.start()

    def _execute(self, run_id, job_name, script_uri, arguments, timeout_minutes) -> None:
        outcome = self.outcomes[run_id]
        started = time.monotonic()
        stdout, stderr = "", ""
        script, zips = None, []
        try:
            self._start_up()
            script = self._fetch_script(script_uri)
            for uri in filter(None, arguments.get("--extra-py-files", "").split(",")):
                zips.append(self._fetch_bundle(uri))
            argv = [self.python, script, "--JOB_NAME", job_name, "--JOB_RUN_ID", run_id]
            for name, value in arguments.items():
                argv += [name, str(value)]
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW", "PYTHONPATH"))},
                **aws_env(self.url, self.key),
                **({"PYTHONPATH": os.pathsep.join(zips)} if zips else {}),
                "PYTHONUNBUFFERED": "1",
            }
            try:
                done = subprocess.run(  # noqa: PLW1510 - the return code is read below
                    argv,
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout_minutes * self.minute_seconds,
                )
                stdout, stderr = done.stdout, done.stderr
                if done.returncode == 0:
                    state, error = "SUCCEEDED", None
                else:
                    state, error = "FAILED", last_error_line(stderr) or f"exit code {done.returncode}"
            except subprocess.TimeoutExpired as expired:
                stdout, stderr = _text(expired.stdout), _text(expired.stderr)
                state, error = "TIMEOUT", f"Job run timed out after {timeout_minutes} minute(s)"
        except NotOurScript as refused:
            state, error = "FAILED", f"stand-in refused to run the job: {refused}"
        except Exception as error_:  # the runner must never leave a run RUNNING forever
            state, error = "FAILED", f"stand-in could not run the job: {error_}"
        finally:
            for path in filter(None, [script, *zips]):
                os.unlink(path)
        # As on Glue, the logs are complete by the time a terminal state is visible.
        self._store_logs(run_id, stdout, stderr)
        outcome.execution_seconds = int(time.monotonic() - started)
        outcome.completed_on = datetime.now(UTC)
        outcome.error = error
        outcome.state = state
        log.info("glue run %s of %s: %s %s", run_id[:12], job_name, state, error or "")

    def _start_up(self) -> None:
        """Wait ``startup_seconds``, then the fault spec's ``glue_startup_ms`` (re-read while waiting, so
        switching it off ends it)."""
        time.sleep(self.startup_seconds)
        started = time.monotonic()
        while self.injector and (time.monotonic() - started) * 1000 < self.injector.spec.glue_startup_ms:
            time.sleep(0.05)

    def _fetch_script(self, script_uri: str) -> str:
        """The script as a private temporary file; NotOurScript when it is not one the runner runs."""
        body = self._fetch(script_uri)
        if body not in self.scripts:
            raise NotOurScript(f"{script_uri!r} is not {layout.GLUE_SCRIPT_PATH.name}, the only script it runs")
        return _private_file(body, ".py")

    def _fetch_bundle(self, uri: str) -> str:
        """A zip of ``--extra-py-files`` as a private temporary file; NotOurScript unless it is the bundle."""
        if self._fetch(uri) != self.bundle:
            raise NotOurScript(f"{uri!r} is not {glue_bundle.BUNDLE_NAME}, the only bundle it runs")
        return _private_file(self.bundle, ".zip")

    def _fetch(self, uri: str) -> bytes:
        bucket, key = uri.strip().removeprefix("s3://").split("/", 1)
        return internal_client("s3", self.url, self.key).get_object(Bucket=bucket, Key=key)["Body"].read()

    def _store_logs(self, run_id: str, stdout: str, stderr: str) -> None:
        logs = internal_client("logs", self.url, self.key)
        for suffix, text in (("output", stdout), ("error", stderr)):
            group = f"{LOG_GROUP}/{suffix}"
            for create, kwargs in (
                (logs.create_log_group, {"logGroupName": group}),
                (logs.create_log_stream, {"logGroupName": group, "logStreamName": run_id}),
            ):
                with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                    create(**kwargs)
            now = int(time.time() * 1000)
            events = [{"timestamp": now, "message": line} for line in text.splitlines() if line.strip()]
            for start in range(0, len(events), 1000):
                logs.put_log_events(logGroupName=group, logStreamName=run_id, logEvents=events[start : start + 1000])


def _private_file(body: bytes, suffix: str) -> str:
    """``body`` in a new temporary file only this user can read; its path."""
    handle, path = tempfile.mkstemp(suffix=suffix, prefix="glue-job-")
    with os.fdopen(handle, "wb") as out:
        out.write(body)
    return path


def last_error_line(stderr: str) -> str:
    """The line a Glue console would show as the error: the last non-empty line of stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:2000] if lines else ""


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# ----------------------------------------------------------------------------------- provisioning


def provision(
    url: str,
    key: Credentials,
    config: settings.Config | None = None,
    make_client: Callable[[str, str, Credentials], object] = client,
    alert_subscriptions: list[dict] | None = None,
) -> dict[str, str]:
    """Create, idempotently, the bucket, topics, subscribed queues and Glue role, and upload the Glue job's
    bundle; return the ``-inbox`` queues' URLs. Each of ``alert_subscriptions`` (local/subscriptions.py) is one
    more queue on the alert topic, with its filter policy."""
    config = config or settings.load()
    s3 = make_client("s3", url, key)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=config.bucket)
    s3.put_object(Bucket=config.bucket, Key=glue_bundle.KEY, Body=glue_bundle.bundle(), ContentType="application/zip")
    sns, sqs = make_client("sns", url, key), make_client("sqs", url, key)
    queues = {}
    for topic_arn in (config.alert_topic_arn, config.ops_topic_arn):
        arn = sns.create_topic(Name=topic_arn.rsplit(":", 1)[-1])["TopicArn"]
        queue_url = sqs.create_queue(QueueName=queue_name(arn))["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        subscribed = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        if not any(s["Endpoint"] == queue_arn for s in subscribed):
            sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
        queues[arn] = queue_url
    subscriptions.provision(sns, sqs, config.alert_topic_arn, alert_subscriptions or [])
    iam = make_client("iam", url, key)
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "glue.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(RoleName=config.glue_role_name, AssumeRolePolicyDocument=json.dumps(trust))
    return queues


def wait_until_up(
    url: str, key: Credentials, timeout: float = 30.0, make_client: Callable[[str, str, Credentials], object] = client
) -> None:
    """Block until the stand-in answers, or raise TimeoutError; PermissionError if it refuses ``key``
    (a stand-in of another state folder on that port)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            make_client("s3", url, key).list_buckets()
            return
        except Exception as error:
            if isinstance(error, ClientError) and error.response["ResponseMetadata"]["HTTPStatusCode"] == 403:
                raise PermissionError(f"AWS stand-in at {url} refused the credentials: {error}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"AWS stand-in at {url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.2)


# -------------------------------------------------------------------------------------- signatures

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})"
)
#: The stand-in's own endpoints (fault switch, listing counters): not AWS calls, answered unsigned.
OPEN_PATHS = (faults.CONTROL_PATH, s3index.STATS_PATH)


def signature_problem(environ: dict, body: bytes, key: Credentials) -> str | None:
    """Why a WSGI request is not signed with ``key``, or None when it is: its SigV4 signature recomputed
    with botocore's signer from the method, the path and query as sent, the signed headers and the body."""
    match = _AUTHORIZATION.fullmatch(environ.get("HTTP_AUTHORIZATION", "").strip())
    if match is None:
        return "no AWS4-HMAC-SHA256 Authorization header"  # presigned URLs too: none of our clients uses one
    key_id, day, region, service, signed, signature = match.groups()
    if key_id != key.access_key:
        return "unknown access key id"
    headers = {}
    for name in signed.split(";"):
        environ_name = name.upper().replace("-", "_")
        value = environ.get(
            environ_name if environ_name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{environ_name}"
        )
        if value is None:
            return f"signed header {name} missing"
        headers[name] = value
    timestamp = headers.get("x-amz-date", "")
    if timestamp[:8] != day:
        return "X-Amz-Date not signed or not the credential's day"
    digest = hashlib.sha256(body).hexdigest()
    if headers.get("x-amz-content-sha256", digest) != digest:  # S3 signs this header, not the body itself
        return "body does not match its signed SHA-256"
    url = f"http://{headers.get('host', '')}{environ.get('RAW_URI', '')}"
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=url, headers=headers, data=body)
    request.context["timestamp"] = timestamp
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(key, service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return None if hmac.compare_digest(expected, signature) else "signature does not match"


class SignedOnly:
    """WSGI middleware in front of everything the stand-in serves but :data:`OPEN_PATHS`: a request not
    signed with the stand-in's credentials is answered 403 with an AWS error body, before moto sees it."""

    def __init__(self, app: Callable, key: Credentials):
        self.app = app
        self.key = key

    def __call__(self, environ: dict, start_response: Callable):
        if environ.get("PATH_INFO") in OPEN_PATHS:
            return self.app(environ, start_response)
        problem = signature_problem(environ, faults.buffer_body(environ), self.key)
        if problem is None:
            return self.app(environ, start_response)
        log.warning("refused %s %r: %s", environ["REQUEST_METHOD"], environ.get("RAW_URI", "")[:200], problem)
        message = f"The AWS stand-in accepts only requests signed with its own credentials: {problem}"
        if environ.get("CONTENT_TYPE", "").startswith("application/x-amz-json"):  # Glue, Logs, SQS
            content_type = environ["CONTENT_TYPE"]
            body = json.dumps({"__type": "UnrecognizedClientException", "message": message}).encode()
        else:  # S3 and the query protocol (SNS, IAM) both read this shape
            content_type = "text/xml"
            body = (
                "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code>"
                f"<Message>{message}</Message></Error><RequestId>standin</RequestId></ErrorResponse>"
            ).encode()
        start_response("403 Forbidden", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]


class KeepAliveRequestHandler(MotoRequestHandler):
    """moto's request handler, keeping the connection open between requests.

    werkzeug's development server answers every request with ``Connection: close`` (http.server cannot
    drain an unread body before the next request line), so each AWS call paid a TCP handshake, a new
    server thread and a new client connection. Here the whole body is read before the app sees it
    (requests to the stand-in are small), the answer goes out as one write with its length, and the
    connection stays open unless the client asks to close it or the call was aborted.
    """

    disable_nagle_algorithm = True

    def log_request(self, code="-", size="-") -> None:
        if log_werkzeug.isEnabledFor(logging.INFO):  # formatting each access line costs even when dropped
            super().log_request(code, size)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        if environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read()
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        answer: dict = {}
        chunks: list[bytes] = []

        def start_response(status, headers, exc_info=None):
            answer.update(status=status, headers=headers)
            return chunks.append

        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except self.connection_dropped_errors:
            self.close_connection = True  # answered with nothing (an injected reset or a dropped call)
            return
        except Exception:
            self.server.log("error", f"Error on request:\n{traceback.format_exc()}")
            answer, chunks = {"status": "500 Internal Server Error", "headers": []}, [b"stand-in error"]
        self._answer(answer["status"], answer["headers"], b"".join(chunks))

    def _answer(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        head = self.command == "HEAD" or 100 <= int(code) < 200 or int(code) in (204, 304)
        for name, value in headers:
            lowered = name.lower()
            if lowered in ("connection", "transfer-encoding") or (lowered == "content-length" and not head):
                continue
            self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if not head:
            self._headers_buffer.append(body)
        self.flush_headers()  # status line, headers and body in one write


class FaultRequestHandler(faults.AbortingRequestHandler, KeepAliveRequestHandler):
    """The stand-in's request handler: keep-alive, and able to reset a connection as a fault."""


class QuickDispatcher(DomainDispatcherApplication):
    """moto's dispatcher with two costs per request removed: finding the service of a host (moto lists
    its package folder and tries hundreds of URL patterns, under a lock, on every request) is done
    once per host, and the services' Flask apps run out of debug mode (moto turns it on) and without
    CORS headers."""

    def __init__(self):
        super().__init__(self._backend_app)
        self._backend_of_host: dict = {}

    @staticmethod
    def _backend_app(service: str):
        app = create_backend_app(service)
        app.debug = False
        # CORS headers are for browsers; every caller here is an SDK client.
        after = app.after_request_funcs.get(None, [])
        after[:] = [hook for hook in after if getattr(hook, "__name__", "") != "cors_after_request"]
        return app

    def get_backend_for_host(self, host):
        if host not in self._backend_of_host:
            self._backend_of_host[host] = super().get_backend_for_host(host)
        return self._backend_of_host[host]


class FaultyMotoServer(ThreadedMotoServer):
    """moto's threaded server with :class:`SignedOnly` and :class:`local.faults.FaultMiddleware` in front
    of its app."""

    def __init__(self, injector: faults.FaultInjector, key: Credentials, **kwargs):
        super().__init__(**kwargs)
        self.injector = injector
        self.key = key

    def _server_entry(self) -> None:
        app = SignedOnly(faults.FaultMiddleware(s3index.StatsPath(QuickDispatcher()), self.injector), self.key)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=FaultRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STANDIN_PORT", "4566")))
    parser.add_argument("--python", default=os.environ.get("STANDIN_GLUE_PYTHON", sys.executable))
    parser.add_argument(
        "--glue-minute-seconds",
        type=float,
        default=float(os.environ.get("STANDIN_GLUE_MINUTE_SECONDS", "60")),
        help="seconds per minute of a Glue job timeout (tests shrink it to see TIMEOUT quickly)",
    )
    parser.add_argument(
        "--glue-startup-seconds",
        type=float,
        default=float(os.environ.get("STANDIN_GLUE_STARTUP_SECONDS", "0")),
        help="seconds each Glue run stays RUNNING before its script starts (a Python shell job's start-up)",
    )
    parser.add_argument(
        "--faults", default="off", help="fault spec, e.g. s3=0.2,sns=0.2,latency_ms=50 (see local/faults.py)"
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (a seed= item wins)")
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="the state folder whose credentials it accepts"
    )
    parser.add_argument(
        "--subscriptions", type=Path, help="an alert subscriptions file (local/subscriptions.py): a queue for each"
    )
    parser.add_argument(
        "--test-glue-scripts", type=Path, help="a folder of scripts (*.py) Glue runs may also name (the runner's tests)"
    )
    args = parser.parse_args(argv)
    try:
        spec = faults.parse_spec(args.faults)
        alert_subscriptions = subscriptions.load(args.subscriptions) if args.subscriptions else []
    except ValueError as error:
        parser.error(str(error))
    injector = faults.FaultInjector(spec, args.fault_seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s standin %(message)s")
    log_werkzeug.setLevel(logging.WARNING)
    url = endpoint(args.host, args.port)
    key = credentials(args.state_dir)
    runner = GlueRunner(
        url, key, args.python, args.glue_minute_seconds, injector, args.glue_startup_seconds, args.test_glue_scripts
    )
    runner.install()
    s3index.S3ListingIndex().install()  # S3 listings in time proportional to the answer (local/s3index.py)
    server = FaultyMotoServer(injector, key, ip_address=args.host, port=args.port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    wait_until_up(url, key, make_client=internal_client)
    provision(url, key, make_client=internal_client, alert_subscriptions=alert_subscriptions)
    print(f"faults: {spec.text()} (seed {injector.seed})", flush=True)
    print(f"AWS stand-in ready on {url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
