"""Fault injection in the local AWS stand-in (local/faults.py): the spec, which calls it hits, and
that an injected failure never has a side effect.

The spec and request-identification tests are pure. The rest run against a stand-in of this module's
own (``--faults`` on the command line, switched per test through ``POST /_standin/faults``), so the
session's fault-free stand-in is never touched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from local import faults, soak
from local.stack import ROOT, free_port
from local.standin import client, queue_name, wait_until_up
from tests.conftest import AIRFLOW_HOME, GLUE_TEST_SCRIPTS, STANDIN_CREDENTIALS

pytestmark = pytest.mark.integration

BUCKET = "price-notification-local"
ALERTS = "arn:aws:sns:us-east-1:123456789012:price-alerts"
NO_RETRIES = Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=60)


# ------------------------------------------------------------------------------------- the spec


def test_spec_example_from_the_docs_parses_to_rates_and_a_latency_for_every_service():
    spec = faults.parse_spec("s3=0.2,glue=0.2,sns=0.2,logs=0.2,latency_ms=50")

    assert spec.rates == {"s3": 0.2, "glue": 0.2, "sns": 0.2, "logs": 0.2}
    assert spec.kinds == ("throttle", "500", "503", "reset")
    assert [spec.hold_ms("latency", service, "Any") for service in faults.SERVICES] == [50, 50, 50, 50]
    assert spec.hold_ms("reply", "s3", "GetObject") == 0


def test_all_sets_every_service_and_the_most_specific_hold_wins():
    spec = faults.parse_spec("all=0.1,sns=0.5,latency_ms=10,sns.latency_ms=20,sns:Publish.latency_ms=30")

    assert spec.rates == {"s3": 0.1, "glue": 0.1, "sns": 0.5, "logs": 0.1}
    assert spec.hold_ms("latency", "sns", "Publish") == 30
    assert spec.hold_ms("latency", "sns", "ListTopics") == 20
    assert spec.hold_ms("latency", "glue", "GetJobRun") == 10


@pytest.mark.parametrize(
    "text",
    [
        "s3=0.2,glue=0.2,sns=0.2,logs=0.2",
        "sns=1,kinds=throttle+reset,seed=3",
        "glue:StartJobRun.reply_ms=30000,s3.latency_ms=5,glue_startup_ms=100",
    ],
)
def test_text_is_canonical_and_parses_back_to_the_same_spec(text):
    spec = faults.parse_spec(text)

    assert faults.parse_spec(spec.text()) == spec


@pytest.mark.parametrize("text", ["", "off", "none", None])
def test_off_and_empty_mean_no_faults(text):
    assert not faults.parse_spec(text).active
    assert faults.parse_spec(text).text() == "off"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("s3=1.5", "'s3=1.5'"),
        ("sqs=0.2", "'sqs=0.2'"),  # the harness reads the subscriber queues: SQS is never faulted
        ("kinds=throttle+teapot", "'kinds=throttle+teapot'"),
        ("s3", "'s3'"),
        ("iam.latency_ms=5", "'iam.latency_ms=5'"),
        ("latency_ms=-1", "'latency_ms=-1'"),
    ],
)
def test_a_bad_item_is_refused_with_its_name(text, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        faults.parse_spec(text)


# ------------------------------------------------------------------------ which call is which


def environ(**values) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", **values}


SCOPE = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=x"


@pytest.mark.parametrize(
    ("request_environ", "service", "action"),
    [
        (
            environ(HTTP_AUTHORIZATION=SCOPE.format("s3"), PATH_INFO="/b/k.json", REQUEST_METHOD="PUT"),
            "s3",
            "PutObject",
        ),
        (
            environ(
                HTTP_AUTHORIZATION=SCOPE.format("s3"),
                PATH_INFO="/b/k",
                REQUEST_METHOD="PUT",
                HTTP_X_AMZ_COPY_SOURCE="b/x",
            ),
            "s3",
            "CopyObject",
        ),
        (
            environ(HTTP_AUTHORIZATION=SCOPE.format("s3"), PATH_INFO="/b", QUERY_STRING="list-type=2"),
            "s3",
            "ListObjectsV2",
        ),
        (
            environ(HTTP_AUTHORIZATION=SCOPE.format("glue"), HTTP_X_AMZ_TARGET="AWSGlue.StartJobRun"),
            "glue",
            "StartJobRun",
        ),
        (environ(HTTP_X_AMZ_TARGET="Logs_20140328.PutLogEvents"), "logs", "PutLogEvents"),
        (environ(HTTP_X_AMZ_TARGET="AmazonSQS.ReceiveMessage"), "sqs", "ReceiveMessage"),
        (
            environ(QUERY_STRING="X-Amz-Credential=testing%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"),
            "s3",
            "ListBuckets",
        ),
        (environ(HTTP_AUTHORIZATION="Bearer abc"), None, None),
    ],
    ids=["s3-put", "s3-copy", "s3-list", "glue-target", "logs-target", "sqs-target", "presigned", "not-aws"],
)
def test_service_and_action_come_from_the_credential_scope_or_the_target(request_environ, service, action):
    assert faults.service_of(request_environ) == service
    if service:
        assert faults.action_of(request_environ, service) == action


def test_an_sns_action_is_read_from_the_form_body():
    request = environ(HTTP_AUTHORIZATION=SCOPE.format("sns"), REQUEST_METHOD="POST")

    assert faults.action_of(request, "sns", b"Action=Publish&TopicArn=arn%3Aaws%3Asns") == "Publish"


def test_draws_are_reproducible_for_a_seed_and_differ_between_seeds():
    def draws(seed):
        injector = faults.FaultInjector(faults.parse_spec("s3=0.5"), seed)
        return [injector.draw("s3") for _ in range(200)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert 60 < sum(kind is not None for kind in draws(1)) < 140
    assert {kind for kind in draws(1) if kind} == set(faults.KINDS)


def test_a_services_draws_do_not_depend_on_the_other_services_calls():
    def sns_draws(other_calls_between):
        injector = faults.FaultInjector(faults.parse_spec("all=0.2"), 7)
        draws = []
        for _ in range(40):
            for _ in range(other_calls_between):
                injector.draw("s3")
            draws.append(injector.draw("sns"))
        return draws

    assert sns_draws(0) == sns_draws(1) == sns_draws(5)


def test_the_soak_seed_faults_sns_within_its_first_eight_calls():
    """The CI soak publishes 8 alerts: its seed must fault one of them, whatever S3 and Glue do."""
    injector = faults.FaultInjector(faults.parse_spec(soak.DEFAULT_FAULTS), 7)

    assert any(injector.draw("sns") for _ in range(8))


# ------------------------------------------------------------------------ against a stand-in


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """A stand-in of this module's own, started with faults on from the command line."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("faults") / "standin.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local.standin",
                "--port",
                str(port),
                "--faults",
                "sns=0.5,seed=11",
                "--glue-startup-seconds",
                "0",  # the tests' stacks start Glue runs up for 5 s, not this one
                "--state-dir",
                str(AIRFLOW_HOME),  # the session stand-in's credentials
                "--test-glue-scripts",
                str(GLUE_TEST_SCRIPTS),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(url, STANDIN_CREDENTIALS, timeout=60)
        while "ready" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def switch(url):
    """Set the stand-in's faults for one test; off again afterwards."""
    yield lambda spec, seed=None: faults.set_faults(url, spec, seed)
    faults.set_faults(url, "off")


def raw_client(service: str, url: str, config: Config = NO_RETRIES):
    """A boto3 client that does not retry, so each injected fault is seen as it is."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=STANDIN_CREDENTIALS.access_key,
        aws_secret_access_key=STANDIN_CREDENTIALS.secret_key,
        config=config,
    )


def drain(url: str) -> list[dict]:
    sqs = client("sqs", url, STANDIN_CREDENTIALS)
    queue = sqs.get_queue_url(QueueName=queue_name(ALERTS))["QueueUrl"]
    out = []
    while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"):
        for message in got:
            out.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return out


def test_the_command_line_spec_and_seed_are_in_force_at_start(url):
    state = faults.fault_state(url)

    assert state["spec"] == "sns=0.5,seed=11"
    assert state["seed"] == 11


def test_a_bad_spec_on_the_command_line_stops_the_stand_in_before_it_serves():
    done = subprocess.run(
        [sys.executable, "-m", "local.standin", "--port", str(free_port()), "--faults", "s3=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert "fault spec item 's3=2'" in done.stderr


def test_a_bad_spec_at_runtime_is_refused_and_the_old_one_stays(url, switch):
    switch("s3=0.1")

    with pytest.raises(ValueError, match="'glue=x'"):
        faults.set_faults(url, "glue=x")
    assert faults.fault_state(url)["spec"] == "s3=0.1"


@pytest.mark.parametrize(
    ("service", "call", "code"),
    [
        ("s3", lambda c: c.list_objects_v2(Bucket=BUCKET), "SlowDown"),
        ("sns", lambda c: c.list_topics(), "Throttling"),
        ("glue", lambda c: c.get_jobs(), "ThrottlingException"),
        ("logs", lambda c: c.describe_log_groups(), "ThrottlingException"),
    ],
)
def test_throttling_is_answered_in_each_services_own_protocol(url, switch, service, call, code):
    switch("all=1,kinds=throttle")

    with pytest.raises(ClientError) as raised:
        call(raw_client(service, url))

    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == (503 if service == "s3" else 400)


@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("503", 503)])
def test_server_errors_carry_their_status(url, switch, kind, status):
    switch(f"all=1,kinds={kind}")

    for service, call in (("s3", lambda c: c.head_bucket(Bucket=BUCKET)), ("sns", lambda c: c.list_topics())):
        with pytest.raises(ClientError) as raised:
            call(raw_client(service, url))
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_a_reset_drops_the_connection_without_an_answer_and_the_next_call_works(url, switch):
    switch("s3=1,kinds=reset")
    s3 = raw_client("s3", url)

    with pytest.raises(ConnectionClosedError):
        s3.list_objects_v2(Bucket=BUCKET)
    switch("off")
    assert s3.list_objects_v2(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_sqs_and_exempt_calls_are_never_faulted(url, switch):
    switch("all=1")

    assert "QueueUrls" in raw_client("sqs", url).list_queues()
    assert faults.exempt(raw_client("s3", url)).list_buckets()["Buckets"]
    assert faults.fault_state(url)["calls"] == {}


def test_a_faulted_put_writes_nothing(url, switch):
    key = f"tests/faults/{uuid.uuid4().hex}.json"
    switch("s3=1,kinds=500+503+throttle+reset")

    for _ in range(8):
        with pytest.raises((ClientError, ConnectionClosedError)):
            raw_client("s3", url).put_object(Bucket=BUCKET, Key=key, Body=b"{}")

    switch("off")
    listed = client("s3", url, STANDIN_CREDENTIALS).list_objects_v2(Bucket=BUCKET, Prefix=key)
    assert listed["KeyCount"] == 0


def test_a_faulted_publish_sends_nothing_and_retried_publishes_arrive_exactly_once(url, switch):
    drain(url)
    switch("sns=1")
    for _ in range(8):
        with pytest.raises((ClientError, ConnectionClosedError)):
            raw_client("sns", url).publish(TopicArn=ALERTS, Message="must not arrive")
    assert drain(url) == []

    # A third of the calls fail; botocore's retries get every publish through, and none arrives twice.
    switch("sns=0.3,seed=5")
    sns = client("sns", url, STANDIN_CREDENTIALS)
    sent = {sns.publish(TopicArn=ALERTS, Message=f"alert {n}")["MessageId"] for n in range(12)}
    state = faults.fault_state(url)

    assert sum(state["faults"].values()) > 0
    received = drain(url)
    assert sorted(m["MessageId"] for m in received) == sorted(sent)
    assert sorted(m["Message"] for m in received) == sorted(f"alert {n}" for n in range(12))


def test_a_held_call_shows_as_held_and_goes_on_when_the_hold_is_switched_off(url, switch):
    key = f"tests/faults/{uuid.uuid4().hex}.json"
    switch("s3:PutObject.latency_ms=600000")
    done = []
    worker = threading.Thread(
        target=lambda: done.append(raw_client("s3", url).put_object(Bucket=BUCKET, Key=key, Body=b"1")), daemon=True
    )
    worker.start()

    held = wait_for(lambda: faults.fault_state(url)["held"])
    assert [(h["phase"], h["service"], h["action"]) for h in held] == [("latency", "s3", "PutObject")]
    assert client("s3", url, STANDIN_CREDENTIALS).list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] == 0

    switch("off")
    worker.join(timeout=60)
    assert done
    assert done[0]["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client("s3", url, STANDIN_CREDENTIALS).get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"1"


def test_a_call_whose_client_leaves_while_held_never_reaches_moto(url, switch):
    key = f"tests/faults/{uuid.uuid4().hex}.json"
    switch("s3:PutObject.latency_ms=600000")
    impatient = raw_client("s3", url, Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=1))

    with pytest.raises(ReadTimeoutError):
        impatient.put_object(Bucket=BUCKET, Key=key, Body=b"lost on the way")

    wait_for(lambda: faults.fault_state(url)["dropped"].get("s3:latency"))
    assert client("s3", url, STANDIN_CREDENTIALS).list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] == 0


def test_a_held_reply_is_work_done_whose_answer_the_client_may_never_see(url, switch):
    """The other way real AWS fails: the object is written, the answer is lost."""
    key = f"tests/faults/{uuid.uuid4().hex}.json"
    switch("s3:PutObject.reply_ms=600000")
    impatient = raw_client("s3", url, Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=1))

    with pytest.raises(ReadTimeoutError):
        impatient.put_object(Bucket=BUCKET, Key=key, Body=b"done, answer lost")

    wait_for(lambda: faults.fault_state(url)["dropped"].get("s3:reply"))
    assert (
        client("s3", url, STANDIN_CREDENTIALS).get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"done, answer lost"
    )


# --------------------------------------------------------------------------------- Glue runs


def glue_job(url: str, script: str) -> str:
    """A Python shell job running ``script`` (a file of tests/data/glue_scripts) on this module's stand-in
    (set up with faults off)."""
    s3, glue = (
        faults.exempt(client("s3", url, STANDIN_CREDENTIALS)),
        faults.exempt(client("glue", url, STANDIN_CREDENTIALS)),
    )
    name = f"test-faults-{uuid.uuid4().hex[:12]}"
    key = f"artifacts/glue-scripts/tests/{name}.py"
    s3.put_object(Bucket=BUCKET, Key=key, Body=(GLUE_TEST_SCRIPTS / script).read_bytes())
    glue.create_job(
        Name=name,
        Role="price-glue-job",
        Command={"Name": "pythonshell", "ScriptLocation": f"s3://{BUCKET}/{key}", "PythonVersion": "3.9"},
    )
    return name


def run_state(url: str, name: str, run_id: str) -> dict:
    return faults.exempt(client("glue", url, STANDIN_CREDENTIALS)).get_job_run(JobName=name, RunId=run_id)["JobRun"]


def finished(url: str, name: str, run_id: str) -> dict:
    return wait_for(lambda: (run := run_state(url, name, run_id)).get("CompletedOn") and run, timeout=180)


def test_a_jobs_own_calls_meet_the_faults_but_the_runners_script_download_and_logs_do_not(url, switch):
    name = glue_job(url, "write_to_s3.py")
    out = f"tests/faults/{uuid.uuid4().hex}.out"
    switch("s3=1,kinds=503")

    run_id = faults.exempt(client("glue", url, STANDIN_CREDENTIALS)).start_job_run(
        JobName=name, Arguments={"--bucket": BUCKET, "--key": out}
    )["JobRunId"]
    run = finished(url, name, run_id)

    assert run["JobRunState"] == "FAILED"
    assert "ServiceUnavailable" in run["ErrorMessage"]  # the job's PutObject, after botocore's retries
    switch("off")
    errors = client("logs", url, STANDIN_CREDENTIALS).get_log_events(
        logGroupName="/aws-glue/python-jobs/error", logStreamName=run_id, startFromHead=True
    )["events"]
    assert any("ServiceUnavailable" in event["message"] for event in errors)  # the runner stored its logs
    assert client("s3", url, STANDIN_CREDENTIALS).list_objects_v2(Bucket=BUCKET, Prefix=out)["KeyCount"] == 0


def test_glue_startup_keeps_a_run_running_before_its_script_starts(url, switch):
    name = glue_job(url, "write_to_s3.py")
    out = f"tests/faults/{uuid.uuid4().hex}.out"
    switch("glue_startup_ms=600000")

    run_id = faults.exempt(client("glue", url, STANDIN_CREDENTIALS)).start_job_run(
        JobName=name, Arguments={"--bucket": BUCKET, "--key": out}
    )["JobRunId"]

    assert run_state(url, name, run_id)["JobRunState"] == "RUNNING"
    assert client("s3", url, STANDIN_CREDENTIALS).list_objects_v2(Bucket=BUCKET, Prefix=out)["KeyCount"] == 0
    switch("off")
    assert finished(url, name, run_id)["JobRunState"] == "SUCCEEDED"
    assert (
        client("s3", url, STANDIN_CREDENTIALS).get_object(Bucket=BUCKET, Key=out)["Body"].read()
        == f"written by {run_id}".encode()
    )


def wait_for(condition, timeout: float = 60):
    """Poll ``condition`` until it returns something truthy; return that (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)
    return result


def test_make_run_hands_standin_faults_to_the_stand_in(monkeypatch):
    from local import run

    class Started(Exception):
        pass

    seen = {}

    def stack(**kwargs):
        seen.update(kwargs)
        raise Started

    monkeypatch.setattr(run, "Stack", stack)
    monkeypatch.setenv("STANDIN_FAULTS", "s3=0.2,glue=0.2,sns=0.2,logs=0.2,latency_ms=50")

    with pytest.raises(Started):
        run.main()
    assert seen["standin_args"][:2] == ("--faults", "s3=0.2,glue=0.2,sns=0.2,logs=0.2,latency_ms=50")
