"""Checks of terraform/: formatting, checkov, and that its names agree with layout.py and settings.py.

The HCL checks parse the files with python-hcl2 and resolve the simple references they use
(``var.x`` to its default, ``local.x``, ``path.module``), so a renamed prefix, job, role, topic or
argument on either side fails here instead of at deploy time. ``terraform validate`` needs the AWS
provider download, which this machine cannot do; docs/deploy.md says so.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import hcl2
import pytest

from include.price_pipeline import glue_bundle, layout, settings

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "terraform"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
DEFAULTS = {s.env: s.default for s in settings.SETTINGS}

#: Settings that Terraform does not decide: Airflow-side knobs and the connection id. Every other
#: PRICE_* setting must be a Terraform output of the same name (and a new setting must be put on
#: one side or the other, here).
AIRFLOW_SIDE = {
    "PRICE_AWS_CONN_ID": "names an Airflow connection, not an AWS resource",
    "PRICE_MAX_ALERT_AGE_MINUTES": "DAG behaviour",
    "PRICE_SENSOR_TIMEOUT_SECONDS": "sensor timing",
    "PRICE_SENSOR_POKE_SECONDS": "sensor timing",
    "PRICE_PAIRS_DEADLINE_SECONDS": "sensor timing",
    "PRICE_PREVIOUS_WINDOW_WAIT_SECONDS": "DAG behaviour",
    "PRICE_DEFERRABLE": "whether a triggerer runs, an Airflow deployment fact",
    "PRICE_GLUE_POLL_SECONDS": "operator timing",
    "PRICE_SLACK_CONN_ID": "names an Airflow connection (the webhook is a secret, never a Terraform output)",
    "PRICE_OPS_REPEAT_MINUTES": "ops paging behaviour (how often an open incident is reminded)",
}

#: Which Terraform resource each ARN/name output comes from.
OUTPUT_RESOURCES = {
    "PRICE_BUCKET": "${aws_s3_bucket.data.id}",
    "PRICE_ALERT_TOPIC_ARN": "${aws_sns_topic.alerts.arn}",
    "PRICE_OPS_TOPIC_ARN": "${aws_sns_topic.ops.arn}",
    "PRICE_GLUE_JOB_NAME": "${aws_glue_job.normalize.name}",
    "PRICE_GLUE_ROLE_NAME": "${aws_iam_role.glue_job.name}",
}

BUCKET = "<bucket>"
#: The job's own default arguments (the DAG's GlueJobOperator sets them in CreateJob, not per run).
JOB_LEVEL = set(settings.glue_job_spec(settings.load({}))["create_job_kwargs"]["DefaultArguments"])
#: What the references to the bundle's object resolve to.
BUNDLE_REFERENCES = {"aws_s3_bucket.data.id": BUCKET, "aws_s3_object.glue_bundle.key": glue_bundle.KEY}


# ------------------------------------------------------------------------------------ HCL loading


def _strip_meta(value):
    if isinstance(value, dict):
        return {k: _strip_meta(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_strip_meta(v) for v in value]
    return value


def _is_legacy_body(value) -> bool:
    return isinstance(value, dict) and all(isinstance(v, list) for k, v in value.items() if not k.startswith("__"))


def _from_legacy_body(body: dict) -> dict:
    """bc-python-hcl2 (checkov's fork, same ``hcl2`` package) wraps every attribute in a list."""
    out = {}
    for key, value in body.items():
        if key.startswith("__"):
            continue
        if key == "dynamic":  # labeled nested blocks: [{label: body}]
            out[key] = [{label: _from_legacy_body(b) for label, b in item.items()} for item in value]
        elif value and all(_is_legacy_body(item) for item in value):
            out[key] = [_from_legacy_body(item) for item in value]  # nested blocks
        else:
            out[key] = value[0]
    return out


LABELS = {"resource": 2, "data": 2, "variable": 1, "output": 1, "provider": 1, "module": 1}


def _from_legacy(tree: dict) -> dict:
    def walk(node, depth):
        if depth == 0:
            return _from_legacy_body(node)
        return {label: walk(child, depth - 1) for label, child in node.items() if not label.startswith("__")}

    return {kind: [walk(block, LABELS.get(kind, 0)) for block in blocks] for kind, blocks in tree.items()}


def load_hcl(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if "serialization_options" in inspect.signature(hcl2.loads).parameters:
        from hcl2.utils import SerializationOptions

        options = SerializationOptions(with_comments=False, strip_string_quotes=True)
        return _strip_meta(hcl2.loads(text, serialization_options=options))
    # A .venv where checkov was installed over python-hcl2 has bc-python-hcl2's API under `hcl2`.
    return _from_legacy(hcl2.loads(text))


class Module:
    """The blocks of every terraform/*.tf file, keyed by their labels."""

    def __init__(self, directory: Path):
        self.resources: dict[tuple[str, str], dict] = {}
        self.data: dict[tuple[str, str], dict] = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        for path in sorted(directory.glob("*.tf")):
            tree = load_hcl(path)
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for block in tree.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            assert (rtype, name) not in target, f"{rtype}.{name} declared twice"
                            target[(rtype, name)] = body
            for block in tree.get("variable", []):
                self.variables.update(block)
            for block in tree.get("output", []):
                self.outputs.update(block)
            for block in tree.get("locals", []):
                for name, value in block.items():
                    assert name not in self.locals, f"local.{name} declared twice"
                    self.locals[name] = value

    def resource(self, rtype: str, name: str) -> dict:
        return self.resources[(rtype, name)]


@cache
def module() -> Module:
    return Module(TERRAFORM_DIR)


class Unresolved(Exception):
    """An expression beyond the simple references this test follows."""


REFERENCE = re.compile(r"\$\{([^{}]+)\}")
ESCAPED = "\x00"


def resolve(value, extra: dict[str, str] | None = None):
    """Follow ``var.x`` (its default), ``local.x[.key]``, ``path.module`` and ``tostring(...)``."""
    tf = module()

    def one(expr: str):
        expr = expr.strip()
        if extra and expr in extra:
            return extra[expr]
        if match := re.fullmatch(r"tostring\((.+)\)", expr):
            return str(one(match.group(1)))
        if expr == "path.module":
            return str(TERRAFORM_DIR)
        parts = expr.split(".")
        if parts[0] == "var" and len(parts) == 2 and parts[1] in tf.variables:
            return resolve(tf.variables[parts[1]]["default"], extra)
        if parts[0] == "local" and len(parts) >= 2 and parts[1] in tf.locals:
            node = tf.locals[parts[1]]
            for key in parts[2:]:
                node = node[key]
            return resolve(node, extra)
        raise Unresolved(expr)

    if isinstance(value, list):
        return [resolve(v, extra) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, extra) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    text = value.replace("$${", ESCAPED)  # HCL's escape for a literal ${
    if match := REFERENCE.fullmatch(text):
        return one(match.group(1))
    return REFERENCE.sub(lambda m: str(one(m.group(1))), text).replace(ESCAPED, "${")


def compact(expression: str) -> str:
    return re.sub(r"\s+", "", expression)


def statements(document: dict) -> dict[str, dict]:
    """The statements of an ``aws_iam_policy_document`` by sid."""
    return {s["sid"]: s for s in document["statement"]}


# ------------------------------------------------------------------------------------ tools


def test_terraform_fmt_is_clean():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
        capture_output=True,
        text=True,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        timeout=120,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def test_checkov_reports_no_failed_check():
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV.relative_to(ROOT)} is missing (make install creates it)")
    result = subprocess.run(
        [str(CHECKOV), "-d", str(TERRAFORM_DIR), "--framework", "terraform"]
        + ["--compact", "--quiet", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0


def test_every_checkov_skip_is_justified():
    """An inline ``#checkov:skip=CKV_...:reason`` is the only way to skip, and it needs a reason."""
    skip = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?$")
    found = []
    for path in sorted(TERRAFORM_DIR.rglob("*.tf")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip" in line:
                match = skip.search(line.strip())
                assert match, f"{path.name}:{number}: malformed skip: {line.strip()}"
                reason = (match.group(2) or "").strip()
                assert len(reason) >= 20, f"{path.name}:{number}: {match.group(1)} needs a real reason"
                found.append(match.group(1))
    assert len(found) <= 6, f"skips are the exception, found {found}"
    assert not (ROOT / ".checkov.yaml").exists() or "skip-check" not in (ROOT / ".checkov.yaml").read_text()


# ------------------------------------------------------------------------------------ names


def test_every_file_parses():
    files = sorted(TERRAFORM_DIR.glob("*.tf"))
    assert {p.name for p in files} >= {"versions.tf", "variables.tf", "outputs.tf"}
    assert module().resources


def test_variable_defaults_match_settings():
    tf = module()
    expected = {
        "ingestion_prefix": DEFAULTS["PRICE_INGESTION_PREFIX"],
        "analysis_prefix": DEFAULTS["PRICE_ANALYSIS_PREFIX"],
        "changes_prefix": DEFAULTS["PRICE_CHANGES_PREFIX"],
        "quarantine_prefix": DEFAULTS["PRICE_QUARANTINE_PREFIX"],
        "glue_job_name": DEFAULTS["PRICE_GLUE_JOB_NAME"],
        "glue_role_name": DEFAULTS["PRICE_GLUE_ROLE_NAME"],
        "max_object_bytes": DEFAULTS["PRICE_MAX_OBJECT_BYTES"],
        "exchange_url": DEFAULTS["PRICE_EXCHANGE_URL"],
        "alert_topic_name": DEFAULTS["PRICE_ALERT_TOPIC_ARN"].rsplit(":", 1)[-1],
        "ops_topic_name": DEFAULTS["PRICE_OPS_TOPIC_ARN"].rsplit(":", 1)[-1],
        # Bucket names are global: AWS gets <project>-<account>-<region>, the stand-in <project>-local.
        "project": DEFAULTS["PRICE_BUCKET"].removesuffix("-local"),
    }
    actual = {name: str(tf.variables[name]["default"]) for name in expected}
    assert actual == expected
    assert expected["ingestion_prefix"] == layout.INGESTION_PREFIX
    assert expected["quarantine_prefix"] == layout.QUARANTINE_PREFIX


def test_bucket_name_is_derived_from_the_project():
    bucket = module().resource("aws_s3_bucket", "data")
    assert bucket["bucket"] == "${local.bucket_name}"
    # A conditional is beyond resolve(); check the fallback branch textually.
    assert '"${var.project}-${local.account_id}-${local.region}"' in module().locals["bucket_name"]


def test_layout_locals_match_layout():
    tf = module()
    assert resolve(tf.locals["parquet_prefix"]) == layout.PARQUET_PREFIX
    assert resolve(tf.locals["glue_scripts_prefix"]) == layout.GLUE_SCRIPTS_PREFIX
    assert Path(resolve(tf.locals["glue_script_file"])).resolve() == layout.GLUE_SCRIPT_PATH
    assert Path(resolve(tf.locals["field_aliases_file"])).resolve() == layout.FIELD_ALIASES_PATH
    script_key = layout.GLUE_SCRIPTS_PREFIX + layout.GLUE_SCRIPT_PATH.name
    assert resolve(tf.locals["glue_script_key"]) == script_key
    assert tuple(c["name"] for c in resolve(tf.locals["canonical_columns"])) == layout.CANONICAL_COLUMNS
    assert Path(resolve(tf.locals["glue_bundle_file"])).resolve() == glue_bundle.BUNDLE_PATH
    assert resolve(tf.locals["glue_bundle_key"]) == glue_bundle.KEY


def test_glue_script_is_uploaded_where_the_operator_uploads_it():
    tf = module()
    script = tf.resource("aws_s3_object", "glue_script")
    assert resolve(script["key"]) == layout.GLUE_SCRIPTS_PREFIX + layout.GLUE_SCRIPT_PATH.name
    assert Path(resolve(script["source"])).resolve() == layout.GLUE_SCRIPT_PATH
    # ETag is not the MD5 of an SSE-KMS object; source_hash tracks the file instead.
    assert compact(script["source_hash"]) == "${filemd5(local.glue_script_file)}"
    assert "etag" not in script
    job = tf.resource("aws_glue_job", "normalize")
    [command] = job["command"]
    assert command["script_location"] == "s3://${aws_s3_bucket.data.id}/${aws_s3_object.glue_script.key}"


def test_glue_bundle_is_uploaded_where_the_job_looks_for_it():
    """The zip `make glue-bundle` builds goes to the key the DAG's job definition names in --extra-py-files."""
    tf = module()
    bundle = tf.resource("aws_s3_object", "glue_bundle")
    assert resolve(bundle["key"]) == glue_bundle.KEY
    assert Path(resolve(bundle["source"])).resolve() == glue_bundle.BUNDLE_PATH
    assert compact(bundle["source_hash"]) == "${filemd5(local.glue_bundle_file)}"
    assert "etag" not in bundle
    arguments = tf.resource("aws_glue_job", "normalize")["default_arguments"]
    assert arguments["--extra-py-files"] == "s3://${aws_s3_bucket.data.id}/${aws_s3_object.glue_bundle.key}"
    config = settings.load({"PRICE_BUCKET": BUCKET})
    resolved = resolve(arguments["--extra-py-files"], extra=BUNDLE_REFERENCES)
    assert resolved == settings.glue_job_spec(config)["create_job_kwargs"]["DefaultArguments"]["--extra-py-files"]


def test_glue_job_definition():
    tf = module()
    job = tf.resource("aws_glue_job", "normalize")
    [command] = job["command"]
    assert command["name"] == "pythonshell"
    assert command["python_version"] == "3.9"
    assert job["glue_version"] == "3.0"
    spec = settings.glue_job_spec(settings.load({}))
    assert float(job["max_capacity"]) == spec["num_of_dpus"]
    [execution] = job["execution_property"]
    assert int(execution["max_concurrent_runs"]) == spec["concurrent_run_limit"]  # backfills are refused otherwise
    assert int(job["max_retries"]) == 0
    assert resolve(job["name"]) == DEFAULTS["PRICE_GLUE_JOB_NAME"]
    assert job["role_arn"] == "${aws_iam_role.glue_job.arn}"
    assert resolve(tf.resource("aws_iam_role", "glue_job")["name"]) == DEFAULTS["PRICE_GLUE_ROLE_NAME"]
    assert job["security_configuration"] == "${aws_glue_security_configuration.job.name}"
    [encryption] = tf.resource("aws_glue_security_configuration", "job")["encryption_configuration"]
    assert {"cloudwatch_encryption", "job_bookmarks_encryption", "s3_encryption"} <= set(encryption)


def _script_options() -> set[str]:
    from include.glue.price_glue import job

    source = Path(job.__file__).read_text(encoding="utf-8")
    return set(re.findall(r'add_argument\(\s*"(--[a-z_]+)"', source))


def test_glue_job_arguments_match_the_script_and_settings():
    job = module().resource("aws_glue_job", "normalize")
    arguments = job["default_arguments"]
    per_run = {"--window_start", "--window_end"}  # the DAG passes these for each window
    assert _script_options() - per_run == set(arguments) - JOB_LEVEL

    assert arguments["--bucket"] == "${aws_s3_bucket.data.id}"
    fixed = {k: v for k, v in arguments.items() if k not in ("--field_aliases", "--pairs", "--extra-py-files")}
    resolved = resolve(fixed, extra={"aws_s3_bucket.data.id": BUCKET})
    assert resolved["--ingestion_prefix"] == layout.INGESTION_PREFIX
    assert resolved["--analysis_prefix"] == layout.ANALYSIS_PREFIX
    assert resolved["--quarantine_prefix"] == layout.QUARANTINE_PREFIX
    assert resolved["--max_object_bytes"] == DEFAULTS["PRICE_MAX_OBJECT_BYTES"]
    assert compact(arguments["--field_aliases"]) == "${jsonencode(jsondecode(file(local.field_aliases_file)))}"

    pins = (ROOT / "requirements.txt").read_text(encoding="utf-8").split()
    modules = resolved["--additional-python-modules"].split(",")
    assert modules
    assert all(m in pins for m in modules), f"{modules} are not pinned like requirements.txt"


def test_glue_job_arguments_match_what_the_dag_passes():
    """settings.glue_job_arguments is what the DAG passes; Terraform's defaults are the same."""
    if not hasattr(settings, "glue_job_arguments"):
        pytest.skip("settings.glue_job_arguments is not there yet")
    config = settings.load({})
    dag = settings.glue_job_arguments(config)
    arguments = module().resource("aws_glue_job", "normalize")["default_arguments"]
    assert set(dag) == set(arguments) - JOB_LEVEL
    computed = {"--field_aliases", "--pairs", *JOB_LEVEL}
    fixed = {k: v for k, v in arguments.items() if k not in computed}
    assert resolve(fixed, extra={"aws_s3_bucket.data.id": config.bucket}) == {
        k: v for k, v in dag.items() if k not in computed
    }
    # --pairs: every pair of the rules file, its default_pair first, the others sorted (the default file: one)
    assert compact(arguments["--pairs"]) == '${join(",",local.glue_pairs)}'
    assert compact(module().locals["glue_pairs"]).startswith("${concat([local.rules.default_pair],sort([")
    assert dag["--pairs"] == "ETH/USDT"
    assert json.loads(dag["--field_aliases"]) == json.loads(layout.FIELD_ALIASES_PATH.read_text("utf-8"))


def test_glue_job_arguments_parse_with_the_job_script():
    """The default arguments, as Glue would pass them plus one window, are accepted by the script."""
    from include.glue.price_glue import job

    arguments = dict(module().resource("aws_glue_job", "normalize")["default_arguments"])
    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text(encoding="utf-8"))
    # What jsonencode(jsondecode(file(...))) yields: minified, keys sorted.
    arguments["--field_aliases"] = json.dumps(aliases, separators=(",", ":"), sort_keys=True)
    arguments["--pairs"] = "ETH/USDT"  # join(",", local.glue_pairs) of the default rules file: its one pair
    resolved = resolve(
        arguments, extra={"aws_s3_bucket.data.id": BUCKET, "aws_s3_object.glue_bundle.key": glue_bundle.KEY}
    )
    argv = [token for pair in resolved.items() for token in pair]
    args = job.parse_args([*argv, "--window_start", "2026-11-25T19:30:00Z"])
    assert args.bucket == BUCKET
    assert args.analysis_prefix == layout.ANALYSIS_PREFIX
    assert args.max_object_bytes == int(DEFAULTS["PRICE_MAX_OBJECT_BYTES"])
    assert args.aliases == aliases


def test_topics_are_named_like_the_settings_and_encrypted_tls_only():
    tf = module()
    for name, setting in (("alerts", "PRICE_ALERT_TOPIC_ARN"), ("ops", "PRICE_OPS_TOPIC_ARN")):
        topic = tf.resource("aws_sns_topic", name)
        assert resolve(topic["name"]) == DEFAULTS[setting].rsplit(":", 1)[-1]
        assert topic["kms_master_key_id"] == "${aws_kms_key.pipeline.arn}"
        policy = tf.resource("aws_sns_topic_policy", name)
        assert policy["arn"] == f"${{aws_sns_topic.{name}.arn}}"
        assert policy["policy"] == f'${{data.aws_iam_policy_document.topic["{name}"].json}}'
    deny = statements(tf.data[("aws_iam_policy_document", "topic")])["DenyInsecureTransport"]
    _assert_denies_plain_http(deny)
    key = tf.resource("aws_kms_key", "pipeline")
    assert key["enable_key_rotation"] is True


def _assert_denies_plain_http(statement: dict):
    assert statement["effect"] == "Deny"
    [condition] = statement["condition"]
    assert (condition["test"], condition["variable"], condition["values"]) == (
        "Bool",
        "aws:SecureTransport",
        ["false"],
    )


def test_bucket_is_private_encrypted_versioned_and_expires_by_prefix():
    tf = module()
    block = tf.resource("aws_s3_bucket_public_access_block", "bucket")
    flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    assert all(block[flag] is True for flag in flags)
    assert block["for_each"] == "${local.buckets}"
    assert set(tf.locals["buckets"]) == {"data", "access_logs"}
    [rule] = tf.resource("aws_s3_bucket_server_side_encryption_configuration", "data")["rule"]
    [default] = rule["apply_server_side_encryption_by_default"]
    assert "aws:kms" in default["sse_algorithm"]
    assert "AES256" in default["sse_algorithm"]
    assert tf.variables["s3_encryption"]["default"] == "SSE-KMS"
    versioning = tf.resource("aws_s3_bucket_versioning", "bucket")
    assert versioning["for_each"] == "${local.buckets}"
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    deny = tf.data[("aws_iam_policy_document", "deny_insecure_transport")]
    assert deny["for_each"] == "${local.buckets}"
    _assert_denies_plain_http(statements(deny)["DenyInsecureTransport"])
    policy = tf.resource("aws_s3_bucket_policy", "data")["policy"]
    assert policy == '${data.aws_iam_policy_document.deny_insecure_transport["data"].json}'


def test_only_raw_records_and_quarantine_copies_expire_and_ledger_history_is_kept():
    tf = module()
    expiry, noncurrent = {}, set()
    for lifecycle_rule in tf.resource("aws_s3_bucket_lifecycle_configuration", "data")["rule"]:
        [rule_filter] = lifecycle_rule["filter"] or [{}]
        [scope] = rule_filter.get("and") or [rule_filter]
        prefix, tags = resolve(scope.get("prefix", "")), resolve(scope.get("tags", {}))
        for expiration in lifecycle_rule.get("expiration", []):
            if "days" in expiration:
                expiry[(prefix, tuple(sorted(tags.items())))] = resolve(expiration["days"])
        if lifecycle_rule.get("noncurrent_version_expiration"):
            noncurrent.add(prefix)
    assert set(expiry) == {(layout.INGESTION_PREFIX, ()), (layout.QUARANTINE_PREFIX, ())}
    assert expiry[(layout.QUARANTINE_PREFIX, ())] > expiry[(layout.INGESTION_PREFIX, ())]
    # No version purge reaches the ledger, the canonical CSV or Parquet (a rule without prefix would).
    assert noncurrent == {layout.INGESTION_PREFIX, layout.QUARANTINE_PREFIX}


def _s3_prefix_of(arn: str) -> str:
    resolved = resolve(arn, extra={"local.bucket_arn": "arn:aws:s3:::" + BUCKET})
    return resolved.removeprefix(f"arn:aws:s3:::{BUCKET}/")


def test_airflow_policy_grants_exactly_what_the_dags_use():
    tf = module()
    policy = statements(tf.data[("aws_iam_policy_document", "airflow")])
    for statement in policy.values():
        assert statement.get("effect", "Allow") == "Allow"
        assert not any("*" in action for action in statement["actions"]), statement["sid"]
        assert "*" not in statement["resources"], statement["sid"]

    granted = {}
    for statement in policy.values():
        for action in statement["actions"]:
            granted.setdefault(action, set()).update(statement["resources"])
    assert set(granted) == {
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        *(f"glue:{a}" for a in ("GetJob", "CreateJob", "UpdateJob", "StartJobRun", "GetJobRun")),
        "glue:GetJobRuns",
        "glue:BatchStopJobRun",
        "iam:PassRole",
        "iam:GetRole",
        "logs:FilterLogEvents",
        "logs:GetLogEvents",
        "sns:Publish",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    }
    reads = {_s3_prefix_of(arn) for arn in granted["s3:GetObject"]}
    writes = {_s3_prefix_of(arn) for arn in granted["s3:PutObject"]}
    assert reads == {
        f"{p}*"
        for p in (
            layout.INGESTION_PREFIX,
            layout.ANALYSIS_PREFIX,
            layout.CHANGES_PREFIX,
            layout.QUARANTINE_PREFIX,
            layout.GLUE_SCRIPTS_PREFIX,
        )
    }
    assert writes == {
        f"{layout.INGESTION_PREFIX}*",  # the exchange feed's records (exchange.write_candles), nothing else there
        f"{layout.CHANGES_PREFIX}*",
        f"{layout.GLUE_SCRIPTS_PREFIX}*",
        f"{layout.PARQUET_PREFIX}*",
    }
    feed = policy["WriteExchangeFeedRecords"]
    assert feed["actions"] == ["s3:PutObject"]
    assert [_s3_prefix_of(arn) for arn in feed["resources"]] == [f"{layout.INGESTION_PREFIX}*"]
    for statement in policy.values():  # elsewhere the ingestion prefix is only read (and listed)
        if statement is not feed and feed["resources"][0] in statement["resources"]:
            assert statement["actions"] == ["s3:GetObject"], statement["sid"]
    [listing] = policy["ListPipelinePrefixes"]["condition"]
    assert listing["variable"] == "s3:prefix"
    listed = {p.removesuffix("*") for p in resolve(listing["values"])}
    assert listed == {p.removesuffix("*") for p in reads} | {layout.PARQUET_PREFIX}
    assert granted["sns:Publish"] == {"${aws_sns_topic.alerts.arn}", "${aws_sns_topic.ops.arn}"}
    assert granted["iam:PassRole"] == {"${aws_iam_role.glue_job.arn}"}
    [passed_to] = policy["PassGlueRoleToGlueOnly"]["condition"]
    assert (passed_to["variable"], passed_to["values"]) == ("iam:PassedToService", ["glue.amazonaws.com"])
    assert granted["glue:StartJobRun"] == {"${local.glue_job_arn}"}
    account = {"local.partition": "aws", "local.region": "r", "local.account_id": "1"}
    job_arn = f"arn:aws:glue:r:1:job/{DEFAULTS['PRICE_GLUE_JOB_NAME']}"
    assert resolve(tf.locals["glue_job_arn"], extra=account) == job_arn


def test_glue_role_reads_raw_and_writes_only_its_outputs():
    tf = module()
    policy = statements(tf.data[("aws_iam_policy_document", "glue_job")])
    for statement in policy.values():
        assert not any("*" in action for action in statement["actions"]), statement["sid"]
        assert "*" not in statement["resources"], statement["sid"]
    reads = {_s3_prefix_of(arn) for arn in policy["ReadRawRecordsAndScript"]["resources"]}
    script = layout.GLUE_SCRIPTS_PREFIX + layout.GLUE_SCRIPT_PATH.name
    assert reads == {f"{layout.INGESTION_PREFIX}*", script, glue_bundle.KEY}
    writes = {_s3_prefix_of(arn) for arn in policy["WriteCanonicalCsvAndQuarantine"]["resources"]}
    assert writes == {f"{layout.ANALYSIS_PREFIX}*", f"{layout.QUARANTINE_PREFIX}*"}
    assert not [s for s in policy.values() if any("Tagging" in action for action in s["actions"])]


def test_outputs_are_exactly_the_deployment_settings():
    tf = module()
    price_env = tf.locals["price_env"]
    unknown = set(AIRFLOW_SIDE) - set(DEFAULTS)
    assert not unknown, f"AIRFLOW_SIDE names settings that no longer exist: {unknown}"
    assert set(tf.outputs) <= set(DEFAULTS), f"outputs that are no setting: {set(tf.outputs) - set(DEFAULTS)}"
    assert set(tf.outputs) == set(DEFAULTS) - set(AIRFLOW_SIDE)
    assert set(price_env) == set(tf.outputs)
    for name, output in tf.outputs.items():
        assert output["value"] == f"${{local.price_env.{name}}}"
        assert output.get("description")

    for name, expression in price_env.items():
        if name in OUTPUT_RESOURCES:
            assert expression == OUTPUT_RESOURCES[name], name
        else:
            assert str(resolve(expression)) == DEFAULTS[name], name


def test_catalog_tables_cover_the_history_prefixes():
    tf = module()
    extra = {"local.s3_root": f"s3://{BUCKET}/"}
    slot = datetime(2026, 1, 5, 9, 35, tzinfo=UTC)
    expected = {
        "analysis_csv": (layout.ANALYSIS_PREFIX, ("year", "month", "day"), layout.partition(slot)),
        "price_changes": (layout.CHANGES_PREFIX, ("year", "month", "day"), layout.partition(slot)),
    }
    values = {"year": slot.strftime("%Y"), "month": slot.strftime("%m"), "day": slot.strftime("%d")}
    for name, (prefix, keys, partition) in expected.items():
        table = tf.resource("aws_glue_catalog_table", name)
        [storage] = table["storage_descriptor"]
        assert resolve(storage["location"], extra) == f"s3://{BUCKET}/{prefix}"
        assert tuple(k["name"] for k in table["partition_keys"]) == keys
        parameters = resolve(table["parameters"], extra)
        assert parameters["projection.enabled"] == "true"
        template = parameters["storage.location.template"]
        filled = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)
        assert filled == f"s3://{BUCKET}/{prefix}{partition}", name
        for key in keys:
            assert parameters[f"projection.{key}.type"] == "integer"
    csv_table = tf.resource("aws_glue_catalog_table", "analysis_csv")
    [storage] = csv_table["storage_descriptor"]
    [serde] = storage["ser_de_info"]
    assert serde["serialization_library"] == "org.apache.hadoop.hive.serde2.OpenCSVSerde"
    assert csv_table["parameters"]["skip.header.line.count"] == "1"
    [columns] = storage["dynamic"]
    assert columns["columns"]["for_each"] == "${local.canonical_columns}"


def test_mwaa_is_optional_and_off_by_default():
    tf = module()
    assert tf.variables["create_mwaa"]["default"] is False
    gated = [key for key in tf.resources if key[0] in {"aws_mwaa_environment"} or key[1].startswith("mwaa")]
    assert ("aws_mwaa_environment", "this") in gated
    for key in gated:
        assert compact(str(tf.resources[key].get("count"))) == "${var.create_mwaa?1:0}", key
    startup = compact(tf.locals["mwaa_startup_script"])
    assert "local.price_env" in startup
    assert "export${name}" in startup


def test_mwaa_installs_the_exchange_feed_client_with_mwaa_constraints():
    """MWAA gets a generated requirements.txt: ccxt pinned like requirements.txt, no constraints line (MWAA
    applies its Airflow version's), nothing MWAA's image owns; the environment installs that object."""
    tf = module()
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text("utf-8").split() if "==" in line)
    wanted = tf.variables["mwaa_requirements"]["default"]
    assert f"ccxt=={pins['ccxt']}" in wanted
    for requirement in wanted:
        name, _, version = requirement.partition("==")
        assert not requirement.startswith("-"), requirement  # no --constraint / -r: MWAA adds its constraints
        assert name.lower() not in {"apache-airflow", "apache-airflow-providers-amazon", "boto3", "botocore"}, name
        assert not version or version == pins.get(name), f"{requirement}: pinned unlike requirements.txt"
    assert "var.mwaa_requirements" in compact(tf.locals["mwaa_requirements_file"])
    upload = tf.resource("aws_s3_object", "mwaa_requirements")
    assert resolve(upload["key"]) == resolve(tf.variables["mwaa_dags_prefix"]["default"]) + "requirements.txt"
    assert upload["content"] == "${local.mwaa_requirements_file}"
    environment = tf.resource("aws_mwaa_environment", "this")
    assert environment["requirements_s3_path"] == "${aws_s3_object.mwaa_requirements[0].key}"
    assert environment["requirements_s3_object_version"] == "${aws_s3_object.mwaa_requirements[0].version_id}"
    # The feed reaches the exchange over HTTPS from the MWAA subnets: their egress is the user's to provide.
    assert "NAT" in tf.variables["mwaa_subnet_ids"]["description"]
    assert "443" in tf.variables["mwaa_security_group_ids"]["description"]


def test_catalog_has_every_pairs_parquet_in_one_table_partitioned_by_pair_and_month():
    """One Parquet layout for every pair, the default one too (it had a table of its own without pair=)."""
    tf = module()
    extra = {"local.s3_root": f"s3://{BUCKET}/"}
    assert ("aws_glue_catalog_table", "pair_parquet") not in tf.resources
    table = tf.resource("aws_glue_catalog_table", "analysis_parquet")
    assert tuple(k["name"] for k in table["partition_keys"]) == ("pair", "year", "month")
    parameters = dict(table["parameters"])
    assert parameters.pop("projection.pair.type") == "enum"
    assert compact(parameters.pop("projection.pair.values")) == '${join(",",local.pair_slugs)}'
    assert (
        compact(tf.locals["pair_slugs"]) == '${sort([forpairinkeys(local.rules.pairs):upper(replace(pair,"/","_"))])}'
    )
    parameters = resolve(parameters, extra)
    for pair in ("ETH/USDT", "BTC/USDT"):
        values = {"pair": layout.pair_slug(pair), "year": "2026", "month": "01"}
        filled = re.sub(r"\$\{(\w+)\}", lambda m, v=values: v[m.group(1)], parameters["storage.location.template"])
        key = layout.parquet_key(2026, 1, pair=pair)
        assert filled + layout.PARQUET_FILE_NAME == f"s3://{BUCKET}/{key}"
    [storage] = table["storage_descriptor"]
    [columns] = storage["dynamic"]
    assert columns["columns"]["for_each"] == "${local.parquet_columns}"


def test_catalog_columns_are_the_fields_the_pipeline_writes():
    from include.price_pipeline import analysis, ledger, parquet, rules

    tf = module()
    slot = datetime(2026, 1, 5, 9, 35, tzinfo=UTC)
    prices = [analysis.Price(slot - layout.SLOT * i, 100.0 + i, "ETH/USDT", f"k{i}") for i in (1, 0)]
    series = rules.Series(prices)
    btc = rules.load(rules.REPO_ROOT / "include" / "rules" / "local.json").pairs["BTC/USDT"]
    decided = {rule.name: rules.evaluate(rule, series, slot) for rule in btc}
    entry = ledger.pair_entry("BTC/USDT", slot, series.at(slot), btc, decided, True, "")
    # One table reads every pair's entries (the default pair's too): the fields of ledger.pair_entry.
    columns = [column["name"] for column in resolve(tf.locals["ledger_columns"])]
    assert columns == list(entry)
    assert re.findall(r"(\w+):", tf.locals["price_struct"]) == list(entry["latest"])
    rule_struct = re.sub(r"\$\{local\.price_struct\}", "", "".join(re.findall(r'"([^"]*)"', tf.locals["rule_struct"])))
    assert re.findall(r"(\w+):", rule_struct) == [*next(iter(entry["rules"].values())), "suppressed_by"]
    table = tf.resource("aws_glue_catalog_table", "analysis_parquet")
    [storage] = table["storage_descriptor"]
    [columns] = storage["dynamic"]
    assert columns["columns"]["for_each"] == "${local.parquet_columns}"
    assert str(parquet.parquet_schema().field("timestamp").type).startswith("timestamp")
    # hcl2 versions render the object differently ({'name': ...} or {name = ...}); the words are the same.
    words = [word for word in re.findall(r"[\w.]+|==|\?", tf.locals["parquet_columns"]) if word != "in"]
    assert words == [
        "for",
        "column",
        "local.canonical_columns",
        "column.name",
        "==",
        "timestamp",
        "?",
        "name",
        "column.name",
        "type",
        "timestamp",
        "column",
    ]


# ------------------------------------------------------------------------------------ alert subscriptions

TFVARS_EXAMPLE = TERRAFORM_DIR / "terraform.tfvars.example"


def _heredoc(text: str) -> str:
    """The text of an HCL heredoc as python-hcl2 returns it (markers included)."""
    match = re.fullmatch(r"<<-?(\w+)\n(.*)\n\s*\1", text, re.S)
    return match.group(2) if match else text


def test_alert_subscriptions_subscribe_to_the_alert_topic_with_their_filter_policy_on_message_attributes():
    subscription = module().resource("aws_sns_topic_subscription", "alerts")
    assert compact(subscription["for_each"]) == compact(
        '${{for s in var.alert_subscriptions : "${s.protocol} ${s.endpoint}" => s}}'
    )
    assert subscription["topic_arn"] == "${aws_sns_topic.alerts.arn}"
    assert (subscription["protocol"], subscription["endpoint"]) == ("${each.value.protocol}", "${each.value.endpoint}")
    assert subscription["filter_policy"] == "${each.value.filter_policy}"
    assert subscription["filter_policy_scope"] == '${each.value.filter_policy == null ? null : "MessageAttributes"}'
    emails = module().resource("aws_sns_topic_subscription", "alert_emails")  # unchanged: no subscription moves
    assert (emails["for_each"], emails["protocol"]) == ("${toset(var.alert_emails)}", "email")


def test_alert_subscriptions_validation_allows_the_protocols_and_attribute_names_make_run_allows():
    from include.price_pipeline import alerts
    from local import subscriptions

    conditions = " ".join(v["condition"] for v in module().variables["alert_subscriptions"]["validation"])
    [protocols] = re.findall(r"contains\((\[[^\]]*\]), s\.protocol\)", conditions)
    [names] = re.findall(r"contains\((\[[^\]]*\]), name\)", conditions)
    assert tuple(json.loads(protocols)) == subscriptions.PROTOCOLS
    assert tuple(json.loads(names)) == alerts.ATTRIBUTES


def test_the_tfvars_example_declares_make_runs_three_subscribers():
    from local import subscriptions

    declared = load_hcl(TFVARS_EXAMPLE)["alert_subscriptions"]
    example = [{**s, "filter_policy": json.loads(_heredoc(s["filter_policy"]))} for s in declared]
    assert example == subscriptions.load(subscriptions.EXAMPLE)


def _plan_variables(tmp_path: Path, tfvars: str) -> subprocess.CompletedProcess:
    """``terraform plan`` of a module holding only variables.tf's alert_emails and alert_subscriptions (no
    provider, so no download): their validation, as Terraform runs it, on ``tfvars``."""
    text = (TERRAFORM_DIR / "variables.tf").read_text(encoding="utf-8")
    blocks = [re.search(rf'^variable "{name}" {{\n.*?^}}\n', text, re.S | re.M).group(0)
              for name in ("alert_emails", "alert_subscriptions")]  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "main.tf").write_text("\n".join(blocks))
    (tmp_path / "terraform.tfvars").write_text(tfvars)
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "NO_COLOR": "1"}
    run = {"cwd": tmp_path, "capture_output": True, "text": True, "env": env, "timeout": 120}
    subprocess.run(["terraform", "init", "-backend=false", "-input=false"], check=True, **run)
    return subprocess.run(["terraform", "plan", "-input=false", "-no-color", "-lock=false"], **run)


@pytest.mark.parametrize(
    ("subscription", "refusal"),
    [
        ('{protocol = "http", endpoint = "http://x"}', "protocol must be one of email, sms, https, sqs, lambda"),
        ('{protocol = "email", endpoint = " "}', "needs an endpoint"),
        ('{protocol = "sms", endpoint = "+15555550100", filter_policy = "{\\"severity\\": [\\"high\\"]}"}',
         "keys are alert attributes"),
        ('{protocol = "sms", endpoint = "+15555550100", filter_policy = "pair = BTC"}', "keys are alert attributes"),
        ('{protocol = "sms", endpoint = "+15555550100"}, {protocol = "sms", endpoint = "+15555550100"}',
         "one subscription per protocol and endpoint"),
    ],
)  # fmt: skip
def test_terraform_refuses_a_subscription_sns_would_refuse_or_that_filters_on_no_attribute(
    tmp_path, subscription, refusal
):
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH")

    wrong = _plan_variables(tmp_path, f"alert_subscriptions = [{subscription}]\n")

    assert wrong.returncode != 0
    assert refusal in " ".join((wrong.stdout + wrong.stderr).split()), wrong.stderr


def test_terraform_accepts_the_tfvars_examples_subscriptions(tmp_path):
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH")

    example = _plan_variables(tmp_path, TFVARS_EXAMPLE.read_text(encoding="utf-8"))

    assert example.returncode == 0, example.stdout + example.stderr


def test_the_tfvars_example_is_formatted():
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH")
    check = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", "-"],
        input=TFVARS_EXAMPLE.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
