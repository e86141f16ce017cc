"""The local AWS stand-in: Glue job runs really execute their script, report real states and logs,
provisioning is idempotent, and the pipeline's own Glue job normalizes a record on it.

Every test uses its own Glue job name and its own days in 2025 (the e2e tests use 2026), so tests
sharing the session's stand-in never see each other's objects.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from datetime import UTC, datetime

import boto3
import pytest
from botocore.exceptions import ClientError

from include.price_pipeline import glue_bundle, layout, settings
from local.standin import client, provision, queue_name
from tests.conftest import GLUE_TEST_SCRIPTS, STANDIN_CREDENTIALS, utc
from tests.records import candle

pytestmark = pytest.mark.integration

LOG_GROUP = "/aws-glue/python-jobs"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "TIMEOUT", "STOPPED", "ERROR")


@pytest.fixture
def logs(aws):
    return aws.client("logs")


def glue_job(aws, script: str | bytes, **job_kwargs) -> str:
    """Upload ``script`` (a file name of tests/data/glue_scripts, or the bytes of one) to the stand-in's S3
    and create a Python shell job running it; return its name."""
    name = f"test-standin-{uuid.uuid4().hex[:12]}"
    key = f"{layout.GLUE_SCRIPTS_PREFIX}tests/{name}.py"
    aws.put(key, script if isinstance(script, bytes) else (GLUE_TEST_SCRIPTS / script).read_bytes())
    aws.glue.create_job(
        Name=name,
        Role=aws.config.glue_role_name,
        Command={"Name": "pythonshell", "ScriptLocation": f"s3://{aws.config.bucket}/{key}", "PythonVersion": "3.9"},
        **job_kwargs,
    )
    return name


def finished_run(aws, name: str, arguments: dict | None = None, timeout: float = 90) -> dict:
    """Start a run of job ``name`` and return its JobRun once it has finished.

    A run is finished when it is in a terminal state and has CompletedOn; the stand-in sets CompletedOn
    after it has stored the run's logs (see test_terminal_state_is_reported_only_after_the_logs_are_stored).
    """
    run_id = aws.glue.start_job_run(JobName=name, Arguments=arguments or {})["JobRunId"]
    deadline = time.monotonic() + timeout
    while True:
        run = aws.glue.get_job_run(JobName=name, RunId=run_id)["JobRun"]
        if run["JobRunState"] in TERMINAL_STATES and "CompletedOn" in run:
            return run
        assert time.monotonic() < deadline, f"run {run_id} of {name} still {run['JobRunState']} after {timeout}s"
        time.sleep(0.2)


def log_lines(logs, stream: str, run_id: str) -> list[str]:
    """Every message of the run's stream in ``/aws-glue/python-jobs/<stream>``, oldest first."""
    lines, token = [], None
    while True:
        page = logs.get_log_events(
            logGroupName=f"{LOG_GROUP}/{stream}",
            logStreamName=run_id,
            startFromHead=True,
            **({"nextToken": token} if token else {}),
        )
        lines.extend(event["message"] for event in page["events"])
        if not page["events"] or page["nextForwardToken"] == token:
            return lines
        token = page["nextForwardToken"]


# ------------------------------------------------------------------ Glue runs and their states


def test_a_job_that_succeeds_is_succeeded_with_its_stdout_in_cloudwatch(aws, logs):
    name = glue_job(aws, "hello.py")

    run = finished_run(aws, name)

    assert run["JobRunState"] == "SUCCEEDED"
    assert "ErrorMessage" not in run
    assert run["LogGroupName"] == LOG_GROUP
    assert log_lines(logs, "output", run["Id"]) == ["hello from the job", "second line"]


def test_a_job_that_raises_is_failed_with_the_error_and_its_traceback_in_cloudwatch(aws, logs):
    name = glue_job(aws, "raises.py")

    run = finished_run(aws, name)

    assert run["JobRunState"] == "FAILED"
    assert "ValueError: boom" in run["ErrorMessage"]
    errors = log_lines(logs, "error", run["Id"])
    assert errors[0] == "Traceback (most recent call last):"
    assert any("in check" in line for line in errors)
    assert errors[-1] == "ValueError: boom"


def test_a_job_that_runs_past_its_timeout_is_timeout_and_keeps_its_earlier_output(aws, logs):
    # The session's stand-in counts 3 seconds per Glue timeout minute.
    name = glue_job(aws, "sleeps.py", Timeout=1)
    started = time.monotonic()

    run = finished_run(aws, name)

    elapsed = time.monotonic() - started
    assert run["JobRunState"] == "TIMEOUT"
    assert "timed out" in run["ErrorMessage"]
    assert 3 <= elapsed < 30
    assert log_lines(logs, "output", run["Id"]) == ["started"]


def test_creating_an_existing_job_again_keeps_it_and_its_runs_as_glue_does(aws):
    """Two tasks that both find no job create it at once (a backfill's first windows): the second
    CreateJob must not drop the run the first one already started."""
    name = glue_job(aws, "hello.py")
    definition = aws.glue.get_job(JobName=name)["Job"]
    run_id = aws.glue.start_job_run(JobName=name)["JobRunId"]

    aws.glue.create_job(Name=name, Role=definition["Role"], Command=definition["Command"])

    assert aws.glue.get_job_run(JobName=name, RunId=run_id)["JobRun"]["Id"] == run_id
    with pytest.raises(ClientError, match="IdempotentParameterMismatchException"):
        aws.glue.create_job(Name=name, Role=definition["Role"], Command=definition["Command"], Timeout=7)
    assert aws.glue.get_job_run(JobName=name, RunId=run_id)["JobRun"]["Id"] == run_id


def test_a_glue_start_up_keeps_each_run_running_before_its_script_starts(tmp_path):
    """``--glue-startup-seconds`` (the tests' stacks use 5 s): a run is RUNNING, its script not started,
    for that long after StartJobRun, as a Python shell job starting up on AWS."""
    import subprocess
    import sys

    from local.stack import free_port
    from local.standin import credentials, wait_until_up

    url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "standin.log"
    with open(log_path, "w") as log:
        argv = [sys.executable, "-m", "local.standin", "--port", url.rsplit(":", 1)[1], "--glue-startup-seconds", "600",
                "--state-dir", str(tmp_path), "--test-glue-scripts", str(GLUE_TEST_SCRIPTS)]  # fmt: skip
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        key = credentials(tmp_path)
        wait_until_up(url, key, timeout=60)
        while "ready" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        s3, glue = client("s3", url, key), client("glue", url, key)
        config = settings.load({})
        s3.put_object(
            Bucket=config.bucket, Key="artifacts/started.py", Body=(GLUE_TEST_SCRIPTS / "hello.py").read_bytes()
        )
        command = {
            "Name": "pythonshell",
            "PythonVersion": "3.9",
            "ScriptLocation": f"s3://{config.bucket}/artifacts/started.py",
        }
        glue.create_job(Name="starting-up", Role=config.glue_role_name, Command=command)
        run_id = glue.start_job_run(JobName="starting-up")["JobRunId"]

        # Watched for 5 s, several times what the script takes without a start-up (the other tests here).
        for _ in range(20):
            run = glue.get_job_run(JobName="starting-up", RunId=run_id)["JobRun"]
            assert (run["JobRunState"], "CompletedOn" in run) == ("RUNNING", False)
            time.sleep(0.25)
        assert "glue run" not in log_path.read_text()  # the runner has not finished it
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_script_receives_the_job_default_arguments_merged_with_the_run_arguments(aws, logs):
    name = glue_job(aws, "echo_arguments.py", DefaultArguments={"--from_job": "job", "--overridden": "job default"})

    run = finished_run(aws, name, {"--overridden": "run value", "--from_run": "run"})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    [line] = log_lines(logs, "output", run["Id"])
    received = json.loads(line)
    assert received["--from_job"] == "job"
    assert received["--overridden"] == "run value"
    assert received["--from_run"] == "run"
    assert received["--JOB_NAME"] == name
    assert received["--JOB_RUN_ID"] == run["Id"]


def test_the_script_boto3_reaches_the_stand_in(aws):
    key = f"tests/standin/{uuid.uuid4().hex}/written-by-glue.txt"
    name = glue_job(aws, "write_to_s3.py")

    run = finished_run(aws, name, {"--bucket": aws.config.bucket, "--key": key})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    assert aws.get(key) == f"written by {run['Id']}".encode()


def test_terminal_state_is_reported_only_after_the_logs_are_stored(aws, logs):
    # Enough output that storing it takes the stand-in dozens of PutLogEvents calls.
    name = glue_job(aws, "many_lines.py")
    run_id = aws.glue.start_job_run(JobName=name)["JobRunId"]
    deadline = time.monotonic() + 90
    while (run := aws.glue.get_job_run(JobName=name, RunId=run_id)["JobRun"])["JobRunState"] not in TERMINAL_STATES:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        newest = logs.get_log_events(logGroupName=f"{LOG_GROUP}/output", logStreamName=run_id, limit=1)["events"]
    except ClientError as error:
        newest = [{"message": error.response["Error"]["Code"]}]

    assert run["JobRunState"] == "SUCCEEDED"
    assert [event["message"] for event in newest] == ["LAST LINE"]
    assert "CompletedOn" in run


@pytest.mark.parametrize("script", ["project", "test"])
def test_a_run_of_any_other_script_fails_in_one_line_and_runs_nothing(aws, logs, script):
    """Anyone able to start a Glue run would run code as the stack's user: the runner runs only the
    project's script (and, here, the session's test scripts), byte for byte."""
    source = layout.GLUE_SCRIPT_PATH if script == "project" else GLUE_TEST_SCRIPTS / "write_to_s3.py"
    key = f"tests/standin/{uuid.uuid4().hex}/written-by-glue.txt"
    name = glue_job(aws, source.read_bytes() + b"\nprint('one line more')\n")

    run = finished_run(aws, name, {"--bucket": aws.config.bucket, "--key": key})

    assert run["JobRunState"] == "FAILED"
    assert run["ErrorMessage"].startswith("stand-in refused to run the job: ")
    assert "normalize_price_record.py, the only script it runs" in run["ErrorMessage"]
    assert "\n" not in run["ErrorMessage"]
    assert aws.keys(key) == []
    assert log_lines(logs, "output", run["Id"]) == log_lines(logs, "error", run["Id"]) == []


def test_a_run_whose_extra_py_files_is_not_the_projects_bundle_fails_in_one_line_and_runs_nothing(aws, logs):
    """A zip on the job's path is code too: the runner puts only the project's own bundle there."""
    zip_key = f"{layout.GLUE_SCRIPTS_PREFIX}tests/{uuid.uuid4().hex}.zip"
    aws.put(zip_key, glue_bundle.bundle() + b"\n")  # still a zip, not the bundle's bytes
    key = f"tests/standin/{uuid.uuid4().hex}/written-by-glue.txt"
    extra = f"s3://{aws.config.bucket}/{glue_bundle.KEY},s3://{aws.config.bucket}/{zip_key}"
    name = glue_job(aws, "write_to_s3.py", DefaultArguments={"--extra-py-files": extra})

    run = finished_run(aws, name, {"--bucket": aws.config.bucket, "--key": key})

    assert run["JobRunState"] == "FAILED"
    assert run["ErrorMessage"].startswith("stand-in refused to run the job: ")
    assert f"{zip_key}' is not price_glue.zip, the only bundle it runs" in run["ErrorMessage"]
    assert aws.keys(key) == []
    assert log_lines(logs, "output", run["Id"]) == log_lines(logs, "error", run["Id"]) == []


def test_the_project_script_imports_its_package_from_the_bundle_only(aws):
    """As on Glue, a run's path holds its --extra-py-files and not the repository: without the bundle the
    job's own script cannot import its package."""
    name = glue_job(aws, layout.GLUE_SCRIPT_PATH.read_bytes(), DefaultArguments=settings.glue_job_arguments(aws.config))

    run = finished_run(aws, name, {"--window_start": "2025-01-07T00:00:00Z"})

    assert run["JobRunState"] == "FAILED"
    assert run["ErrorMessage"] == "ModuleNotFoundError: No module named 'include'"


# ------------------------------------------------------------------ who may call it

SIGNED_CALLS = {
    "s3": lambda c: c.list_objects_v2(Bucket=settings.load().bucket, MaxKeys=1),
    "glue": lambda c: c.get_jobs(MaxResults=1),
    "sns": lambda c: c.list_topics(),
    "sqs": lambda c: c.list_queues(),
    "iam": lambda c: c.list_roles(MaxItems=1),
    "logs": lambda c: c.describe_log_groups(limit=1),
}


@pytest.mark.parametrize("service", SIGNED_CALLS)
@pytest.mark.parametrize("key", ["made up", "our key id, another secret"])
def test_a_call_not_signed_with_the_stacks_own_credentials_is_refused_403(standin, aws, service, key):
    from botocore.credentials import Credentials

    access_key = "MADEUPKEYID" if key == "made up" else STANDIN_CREDENTIALS.access_key
    stranger = client(service, standin, Credentials(access_key, "not-the-secret"))

    with pytest.raises(ClientError) as refused:
        SIGNED_CALLS[service](stranger)

    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "accepts only requests signed with its own credentials" in refused.value.response["Error"]["Message"]
    SIGNED_CALLS[service](aws.client(service))  # the stack's own: answered


def test_a_signed_request_with_another_body_and_a_presigned_url_are_refused_403(standin, aws):
    """The signature covers the body (S3 signs its SHA-256); a query-string signature is no way in either:
    none of the stack's clients uses one."""
    import http.client
    import urllib.request
    from urllib.error import HTTPError
    from urllib.parse import urlsplit

    from local.standin import signed_headers

    key = f"tests/standin/{uuid.uuid4().hex}/tampered.txt"
    path = f"/{aws.config.bucket}/{key}"
    headers = signed_headers("PUT", standin + path, STANDIN_CREDENTIALS, b"the signed body")
    address = urlsplit(standin)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("PUT", path, body=b"another body!!!", headers=headers)
        tampered = connection.getresponse()
        tampered_body = tampered.read()
    finally:
        connection.close()
    aws.put(key, b"written by the stack")
    presigned = aws.s3.generate_presigned_url("get_object", Params={"Bucket": aws.config.bucket, "Key": key})

    with pytest.raises(HTTPError) as refused:
        urllib.request.urlopen(presigned, timeout=10)  # noqa: S310 - the stand-in on loopback

    assert (tampered.status, refused.value.code) == (403, 403)
    assert b"body does not match" in tampered_body
    assert aws.get(key) == b"written by the stack"


# ------------------------------------------------------------------ provisioning


def test_provision_is_idempotent_one_subscription_per_topic(standin, aws):
    first = provision(standin, STANDIN_CREDENTIALS)
    second = provision(standin, STANDIN_CREDENTIALS)

    assert first == second
    sns, sqs = aws.client("sns"), aws.client("sqs")
    config = settings.load()
    assert set(second) == {config.alert_topic_arn, config.ops_topic_arn}
    for topic_arn, queue_url in second.items():
        assert queue_url.endswith(queue_name(topic_arn))
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
        assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("sqs", queue_arn)]
    assert config.bucket in {b["Name"] for b in aws.s3.list_buckets()["Buckets"]}
    assert aws.client("iam").get_role(RoleName=config.glue_role_name)["Role"]["RoleName"] == config.glue_role_name
    assert aws.get(glue_bundle.KEY) == glue_bundle.bundle()  # the Glue job's --extra-py-files


# ------------------------------------------------------------------ the pipeline's own Glue job


def _canonical_rows(body: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


def test_the_normalize_job_turns_a_raw_record_into_its_canonical_csv_byte_identically_on_rerun(aws, logs):
    slot = utc(2025, 3, 14, 12, 0)
    record = candle(slot, 3120.55)
    raw_key = layout.ingestion_key(slot, ".json", aws.config.ingestion_prefix, pair="ETH/USDT")
    raw_body = json.dumps(record).encode()
    aws.put(raw_key, raw_body)
    window = {"--window_start": "2025-03-14T12:00:00Z"}
    output_key = layout.analysis_key(slot, aws.config.analysis_prefix)

    first = aws.run_real_glue_job(window)
    first_body = aws.get(output_key)
    aws.s3.delete_object(Bucket=aws.config.bucket, Key=output_key)  # so the re-run must write it again
    second = aws.run_real_glue_job(window)

    assert first["JobRunState"] == second["JobRunState"] == "SUCCEEDED", first.get("ErrorMessage")
    [row] = _canonical_rows(first_body)
    assert row["timestamp"] == "2025-03-14T12:00:00Z"
    assert row["pair"] == "ETH/USDT"
    assert datetime.fromisoformat(row["timestamp"]).astimezone(UTC) == slot
    for column, field in [
        ("open", "open"),
        ("high", "high"),
        ("low", "low"),
        ("close", "close"),
        ("volume", "volume"),
        ("quote_volume", "quoteVolume"),
        ("weighted_average", "weightedAverage"),
    ]:
        assert float(row[column]) == record[field], column
    assert row["source_key"] == raw_key
    assert row["source_format"] == "json"
    assert list(row) == list(layout.CSV_COLUMNS)
    assert (row["weighted_average_basis"], row["superseded"]) == ("record", "")
    summary = json.loads(log_lines(logs, "output", first["Id"])[-1].removeprefix("SUMMARY "))
    assert (summary["objects"], summary["rows"], summary["quarantined"]) == (1, 1, [])
    assert aws.get(output_key) == first_body, "a re-run must write byte-identical output"
    assert aws.get(raw_key) == raw_body, "the raw record must stay untouched"
    assert aws.keys(layout.QUARANTINE_PREFIX + layout.partition(slot)) == []


def test_one_connection_carries_many_calls_and_each_answer_is_framed_by_its_length(standin, aws):
    """The stand-in keeps connections open (werkzeug closes each one): a PUT, a HEAD and a GET follow
    each other on one socket, the HEAD answers the object's length with no body, and an unread body
    (an unknown path) does not spill into the next request."""
    import http.client
    from urllib.parse import urlsplit

    from local.standin import signed_headers

    address = urlsplit(standin)
    path = f"/{aws.config.bucket}/tests/keep-alive/{uuid.uuid4().hex}.txt"
    body = b"price," * 50
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    answers = []
    try:
        for method, target, data in (
            ("PUT", path, body),
            ("HEAD", path, b""),
            ("POST", "/no-such-service/anything", b"x" * 5000),
            ("GET", path, b""),
        ):
            connection.request(
                method, target, body=data, headers=signed_headers(method, standin + target, STANDIN_CREDENTIALS, data)
            )
            response = connection.getresponse()
            answers.append((response.status, response.getheader("Content-Length"), response.read()))
            if method == "PUT":
                sock = connection.sock
                assert response.getheader("Connection") != "close"
            assert connection.sock is sock  # still the first socket
    finally:
        connection.close()

    put, head, _unknown, get = answers
    assert put[0] == 200
    assert head == (200, str(len(body)), b"")
    assert get == (200, str(len(body)), body)


# ------------------------------------------------------------------ S3 listings from the key index

DAY_PREFIX = "crypto/01-data-ingestion/year=2025/month=07/day=02/"
#: Keys under several prefixes: three days of hourly records, canonical CSVs one folder deeper,
#: and names sharing prefixes with and without the delimiter.
LISTING_KEYS = [
    *(f"crypto/01-data-ingestion/year=2025/month=07/day={day:02d}/{h:02d}{m:02d}.json" for day in (1, 2, 3)
      for h in range(24) for m in (0,)),
    *(f"crypto/02-data-analysis/year=2025/month=07/day=01/{h:02d}00/pairs.csv" for h in range(12)),
    *("a", "a/", "a/b", "a/b/c/d", "a-b", "ab", "ab/c", "abc", "é/1", "z"),
]  # fmt: skip
LISTING_PREFIXES = [
    "",
    "crypto/",
    DAY_PREFIX,
    "crypto/01-data-ingestion/year=2025/month=07/day=0",
    "crypto/02-data-analysis/year=2025/month=07/day=01/",
    "a",
    "a/b/",
    "nothing/",
]


def _write_listing_bucket(s3, bucket: str, versioned: bool) -> None:
    """The same writes on any S3: puts, an overwrite, deletes, a copy and a multipart upload."""
    s3.create_bucket(Bucket=bucket)
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for key in LISTING_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.put_object(Bucket=bucket, Key=f"{DAY_PREFIX}1200.json", Body=b"overwritten")
    s3.delete_object(Bucket=bucket, Key=f"{DAY_PREFIX}0100.json")
    s3.delete_object(Bucket=bucket, Key="a/b/c/d")  # the only key of a/b/c/: a delete marker when versioned
    s3.copy_object(Bucket=bucket, Key=f"{DAY_PREFIX}0030.json", CopySource={"Bucket": bucket, "Key": "abc"})
    s3.copy_object(Bucket=bucket, Key="ab/copied", CopySource={"Bucket": bucket, "Key": "a-b"})
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"{DAY_PREFIX}2359.json")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key=f"{DAY_PREFIX}2359.json", UploadId=upload, PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=f"{DAY_PREFIX}2359.json",
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )


def _listings(s3, bucket: str) -> dict[tuple, list[dict]]:
    """Every listing variant of the bucket, page by page, as parsed answers without request ids or times."""
    out = {}
    for v2 in (True, False):
        for prefix in LISTING_PREFIXES:
            for delimiter in (None, "/"):
                for mode in ("pages", "tiny pages", "after"):
                    args = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
                    if mode == "pages":
                        args["MaxKeys"] = 20  # every page
                    elif mode == "tiny pages":
                        args["MaxKeys"] = 2  # the first two pages
                    elif mode == "after":
                        args.update({"MaxKeys": 5, ("StartAfter" if v2 else "Marker"): f"{DAY_PREFIX}0300.json"})
                    pages = []
                    while len(pages) < (2 if mode == "tiny pages" else 100):
                        page = (s3.list_objects_v2 if v2 else s3.list_objects)(**args)
                        page.pop("ResponseMetadata")
                        for item in page.get("Contents", []):
                            item.pop("LastModified")
                        pages.append(page)
                        if "pages" not in mode or not page["IsTruncated"]:
                            break
                        args.pop("StartAfter", None)
                        if v2:
                            args["ContinuationToken"] = page["NextContinuationToken"]
                        else:
                            args["Marker"] = page["NextMarker"]
                    out[(v2, prefix, delimiter, mode)] = pages
    return out


@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
def test_listings_through_the_stand_in_equal_plain_moto(standin, versioned):
    from moto import mock_aws
    from moto.s3 import models as s3_models

    from local import s3index

    bucket = f"test-listing-{uuid.uuid4().hex[:12]}"
    s3 = client("s3", standin, STANDIN_CREDENTIALS)
    _write_listing_bucket(s3, bucket, versioned)
    through_stand_in = _listings(s3, bucket)
    with mock_aws():
        assert s3_models.S3Backend.list_objects.__module__ == "moto.s3.models", "plain moto, not the index"
        plain = boto3.client("s3", region_name=settings.LOCAL_REGION)
        _write_listing_bucket(plain, bucket, versioned)
        from_moto = _listings(plain, bucket)

    assert through_stand_in == from_moto
    assert s3index.stats_of(standin)[bucket]["examined"] > 0, "the stand-in answered from its index"
    day = [[item["Key"] for item in page["Contents"]] for page in through_stand_in[(True, DAY_PREFIX, None, "pages")]]
    assert [len(page) for page in day] == [20, 5]  # 24 hours - 1 deleted + 1 copied + 1 multipart
    assert f"{DAY_PREFIX}0100.json" not in day[0]


@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
def test_indexed_listings_are_byte_identical_to_moto_on_the_same_objects(versioned):
    """In one process, one set of objects: every listing's XML with the index equals moto's own."""
    from moto import mock_aws

    from local.s3index import S3ListingIndex

    index = S3ListingIndex()
    bodies: list[bytes] = []
    with mock_aws(), index:
        s3 = boto3.client("s3", region_name=settings.LOCAL_REGION)
        for operation in ("ListObjects", "ListObjectsV2"):
            s3.meta.events.register(f"after-call.s3.{operation}", lambda http_response, **_: bodies.append(
                http_response.content))  # fmt: skip
        _write_listing_bucket(s3, "listing", versioned)
        indexed = _listings(s3, "listing")
        indexed_bodies, bodies[:] = list(bodies), []
        index.uninstall()
        plain = _listings(s3, "listing")

    assert indexed == plain
    assert indexed_bodies == bodies


def test_a_listing_walks_the_keys_of_its_page_not_the_bucket(monkeypatch):
    """Keys read per listing of one day (288 keys) in a bucket of ten days: the page's, with the index;
    every key of the bucket, without it (moto's own listing)."""
    from moto import mock_aws
    from moto.s3 import models as s3_models
    from moto.s3.utils import _VersionedKeyStore

    from local.s3index import S3ListingIndex

    read = []
    original = _VersionedKeyStore.__sgetitem__
    monkeypatch.setattr(_VersionedKeyStore, "__sgetitem__", lambda store, key: read.append(key) or original(store, key))
    day = "crypto/01-data-ingestion/year=2025/month=07/day=05/"
    index = S3ListingIndex()
    with mock_aws(), index:
        s3 = boto3.client("s3", region_name=settings.LOCAL_REGION)
        s3.create_bucket(Bucket="many")
        backend = s3_models.s3_backends["123456789012"]["aws"]
        for n in range(1, 11):
            for minute in range(0, 1440, 5):
                key = (
                    f"crypto/01-data-ingestion/year=2025/month=07/day={n:02d}/{minute // 60:02d}{minute % 60:02d}.json"
                )
                backend.put_object("many", key, b"{}")
        total = len(backend.get_bucket("many").keys)

        def keys_read(**args) -> tuple[int, list]:
            read.clear()
            page = s3.list_objects_v2(Bucket="many", **args)
            return len(read), [item["Key"] for item in page.get("Contents", [])] + [
                p["Prefix"] for p in page.get("CommonPrefixes", [])
            ]

        whole_day = keys_read(Prefix=day)
        first_page = keys_read(Prefix=day, MaxKeys=10)
        from_the_middle = keys_read(Prefix=day, StartAfter=f"{day}1200.json", MaxKeys=10)
        days = keys_read(Prefix="crypto/01-data-ingestion/year=2025/month=07/", Delimiter="/")
        index.uninstall()
        whole_day_unindexed = keys_read(Prefix=day)

    assert total == 2880
    assert len(whole_day[1]) == 288
    # The keys walked (288; the page of 10 and one more; one per day folder) are read at most twice:
    # whether the newest version is a delete marker, and when handed to moto's listing code.
    assert whole_day[0] <= 2 * 288
    assert first_page[0] <= 2 * 11
    assert from_the_middle[1][0] == f"{day}1205.json"
    assert from_the_middle[0] <= 2 * 11
    assert len(days[1]) == 10
    assert days[0] <= 2 * 10
    assert whole_day_unindexed == (total, whole_day[1])  # moto's own listing reads every key


def test_the_stand_in_lists_a_prefix_by_walking_only_its_keys(standin):
    """Through the real server: listing one of three prefixes walks that prefix's keys; a delimited
    listing of the bucket walks one key per common prefix."""
    from local import s3index

    bucket = f"test-s3-index-{uuid.uuid4().hex[:12]}"
    s3 = client("s3", standin, STANDIN_CREDENTIALS)
    s3.create_bucket(Bucket=bucket)
    for folder in ("day=01", "day=02", "day=03"):
        for n in range(30):
            s3.put_object(Bucket=bucket, Key=f"{folder}/{n:04d}.json", Body=b"{}")

    def walked(**args) -> int:
        before = s3index.stats_of(standin)[bucket]["examined"]
        s3.list_objects_v2(Bucket=bucket, **args)
        return s3index.stats_of(standin)[bucket]["examined"] - before

    assert s3index.stats_of(standin)[bucket] == {"keys": 90, "examined": 0}
    assert walked(Prefix="day=02/") == 30
    assert walked(Prefix="day=02/", MaxKeys=5) == 6  # the page and one more, to tell it is truncated
    assert walked(Prefix="day=02/", StartAfter="day=02/0027.json") == 2
    assert walked(Delimiter="/") == 3
