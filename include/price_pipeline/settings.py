"""Deployment settings: read from the environment, each with a documented default (README "Settings").
Credentials are never settings (the Airflow connection ``PRICE_AWS_CONN_ID`` names), nor are alert rules
(the rules file). The defaults match the local stand-in; on AWS each comes from a Terraform output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta

from include.price_pipeline import glue_bundle, layout

LOCAL_ACCOUNT = "123456789012"
LOCAL_REGION = "us-east-1"


@dataclass(frozen=True)
class Setting:
    """One environment setting: its variable, default and meaning (the README table is built from these)."""

    env: str
    default: str
    doc: str


SETTINGS = (
    Setting("PRICE_AWS_CONN_ID", "aws_default", "Airflow connection holding AWS credentials/endpoint"),
    Setting("PRICE_BUCKET", "price-notification-local", "S3 bucket for every prefix below"),
    Setting("PRICE_INGESTION_PREFIX", layout.INGESTION_PREFIX, "where producers write raw records"),
    Setting("PRICE_ANALYSIS_PREFIX", layout.ANALYSIS_PREFIX, "canonical CSV written by the Glue job"),
    Setting("PRICE_CHANGES_PREFIX", layout.CHANGES_PREFIX, "ledger: one object per window, a JSON line per pair"),
    Setting("PRICE_QUARANTINE_PREFIX", layout.QUARANTINE_PREFIX, "copies of objects that failed checks"),
    Setting(
        "PRICE_ALERT_TOPIC_ARN",
        f"arn:aws:sns:{LOCAL_REGION}:{LOCAL_ACCOUNT}:price-alerts",
        "SNS topic subscribers receive price alerts on",
    ),
    Setting(
        "PRICE_OPS_TOPIC_ARN",
        f"arn:aws:sns:{LOCAL_REGION}:{LOCAL_ACCOUNT}:price-pipeline-ops",
        "SNS topic for pipeline health (failures, stale feed, quarantine)",
    ),
    Setting(
        "PRICE_OPS_REPEAT_MINUTES",
        "60",
        "how often an open ops incident is reminded, in minutes of failing windows (0: never)",
    ),
    Setting("PRICE_GLUE_JOB_NAME", "price-normalize-record", "Glue Python shell job name"),
    Setting("PRICE_GLUE_ROLE_NAME", "price-glue-job", "IAM role the Glue job runs as"),
    Setting("PRICE_MAX_ALERT_AGE_MINUTES", "15", "windows ending longer ago than this do not notify"),
    Setting(
        "PRICE_SENSOR_TIMEOUT_SECONDS",
        "900",
        "how long a live window's run waits for a record of any pair (a past window's looks once)",
    ),
    Setting("PRICE_SENSOR_POKE_SECONDS", "2", "how often the sensor lists the window prefix"),
    Setting(
        "PRICE_PAIRS_DEADLINE_SECONDS",
        "120",
        "how long after a live window ends its run waits for the pairs still missing once one pair's record is there",
    ),
    Setting(
        "PRICE_GLUE_POLL_SECONDS",
        "5",
        "how often the Glue task asks whether its job run has ended (each ask also reads the job's new log lines)",
    ),
    Setting(
        "PRICE_PREVIOUS_WINDOW_WAIT_SECONDS",
        "1800",
        "at most how long a window waits for an earlier one a run is still normalizing (parallel backfills)",
    ),
    Setting("PRICE_DEFERRABLE", "true", "defer waits to the triggerer; false where none runs (dags test)"),
    Setting("PRICE_SLACK_CONN_ID", "", "Slack incoming-webhook connection; empty: alerts go to SNS only"),
    Setting("PRICE_MAX_OBJECT_BYTES", "1048576", "raw objects above this are quarantined unread"),
    Setting(
        "PRICE_RULES_FILE",
        "include/rules/default.json",
        "pairs and alert rules (JSON; relative to the repository root), the default pair among them",
    ),
    Setting(
        "PRICE_EXCHANGE_URL",
        "",
        "the exchange feed's Binance-API base URL (ccxt's `urls['api']['public']`); empty: each exchange's own",
    ),
)

_BY_NAME = {s.env: s for s in SETTINGS}

#: Task defaults both DAGs share (plain values; each DAG adds its ops notifier as on_failure_callback).
DEFAULT_TASK_ARGS = {
    "owner": "price-alerts",
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


@dataclass(frozen=True)
class Config:
    """Resolved settings, one attribute per ``PRICE_*`` variable (lower case, prefix dropped)."""

    aws_conn_id: str
    bucket: str
    ingestion_prefix: str
    analysis_prefix: str
    changes_prefix: str
    quarantine_prefix: str
    alert_topic_arn: str
    ops_topic_arn: str
    ops_repeat_minutes: int
    glue_job_name: str
    glue_role_name: str
    max_alert_age_minutes: int
    sensor_timeout_seconds: int
    sensor_poke_seconds: int
    pairs_deadline_seconds: int
    glue_poll_seconds: int
    previous_window_wait_seconds: int
    deferrable: bool
    slack_conn_id: str
    max_object_bytes: int
    rules_file: str
    exchange_url: str


#: Settings that became fields of the rules file (its one home): setting one fails loudly instead of being
#: ignored. Each says where its value lives now.
RETIRED = {
    "PRICE_THRESHOLD_PCT": "set threshold_pct of the pair's rule in the rules file (PRICE_RULES_FILE), or the DAG "
    "param of the same name for one run",
    "PRICE_LOOKBACK_MINUTES": "set tolerance_minutes (lookback - minutes) of the pair's rule in the rules file "
    "(PRICE_RULES_FILE), or the DAG param lookback_minutes for one run",
    "PRICE_PAIR": "the rules file (PRICE_RULES_FILE) names the default pair once: its default_pair",
}


def _boolean(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting from ``environ`` (default ``os.environ``), falling back to its default."""
    environ = os.environ if environ is None else environ
    for name, instead in RETIRED.items():
        if name in environ:
            raise ValueError(f"{name} is no longer a setting: {instead}")
    values = {}
    for field in fields(Config):
        setting = _BY_NAME[f"PRICE_{field.name.upper()}"]
        raw = environ.get(setting.env, setting.default)
        try:
            values[field.name] = {"float": float, "int": int, "bool": _boolean}.get(field.type, str)(raw)
        except ValueError as error:
            raise ValueError(f"{setting.env}={raw!r} is not a valid {field.type}") from error
    return Config(**values)


def load_rules(config: Config):
    """The rules file ``PRICE_RULES_FILE`` names, validated (a small local file: fine when a DAG is parsed)."""
    from include.price_pipeline import rules

    return rules.load(rules.resolve_path(config.rules_file))


def glue_job_arguments(config: Config) -> dict[str, str]:
    """The Glue job's fixed arguments (the DAG adds the window; Terraform sets the same defaults): ``--pairs``
    names every pair of the rules file, its default pair first (the legacy alias's)."""
    rule_set = load_rules(config)
    others = sorted(pair for pair in rule_set.pairs if pair != rule_set.default_pair)
    return {
        "--pairs": ",".join([rule_set.default_pair, *others]),
        "--bucket": config.bucket,
        "--ingestion_prefix": config.ingestion_prefix,
        "--analysis_prefix": config.analysis_prefix,
        "--quarantine_prefix": config.quarantine_prefix,
        "--max_object_bytes": str(config.max_object_bytes),
        "--field_aliases": json.dumps(json.loads(layout.FIELD_ALIASES_PATH.read_text()), separators=(",", ":")),
    }


#: How long one job run may take (Glue stops it then: TIMEOUT); a range run sets its own (history.py).
GLUE_JOB_TIMEOUT_MINUTES = 10


def glue_wait(timeout_minutes: int, poll_seconds: int) -> dict:
    """How a GlueJobOperator waits for its run: a poll every ``poll_seconds`` for as long as Glue lets the
    run go (its ``timeout_minutes``) and a minute more. The provider's default of 75 polls gives up after
    6 minutes at 5 s while Glue still runs the job, and the task's retry would start a second run beside it."""
    return {
        "waiter_delay": poll_seconds,
        "job_poll_interval": poll_seconds,
        "waiter_max_attempts": -(-(timeout_minutes + 1) * 60 // poll_seconds),
    }


def glue_job_spec(config: Config) -> dict:
    """The Glue job as every DAG's GlueJobOperator defines it: one Python shell job (0.0625 DPU; a Spark job
    costs about 30x more) running the script the operator uploads, its package from the bundle beside it
    (``--extra-py-files``: Terraform's upload on AWS, the stand-in's at its start; README "Architecture")."""
    return {
        "job_name": config.glue_job_name,
        "job_desc": "Normalize raw price records to canonical CSV (price pipeline)",
        "script_location": str(layout.GLUE_SCRIPT_PATH),
        "s3_bucket": config.bucket,
        "replace_script_file": True,
        "iam_role_name": config.glue_role_name,
        "num_of_dpus": 0.0625,
        # Backfills run windows in parallel: Glue must accept as many concurrent runs.
        "concurrent_run_limit": 16,
        "create_job_kwargs": {
            # Repeat ScriptLocation: a Command key replaces the provider's default one.
            "Command": {
                "Name": "pythonshell",
                "PythonVersion": "3.9",
                "ScriptLocation": f"s3://{config.bucket}/{layout.GLUE_SCRIPTS_PREFIX}{layout.GLUE_SCRIPT_PATH.name}",
            },
            "Timeout": GLUE_JOB_TIMEOUT_MINUTES,
            "DefaultArguments": {
                "--additional-python-modules": "defusedxml==0.7.1",
                "--extra-py-files": f"s3://{config.bucket}/{glue_bundle.KEY}",
            },
        },
    }


def policy_params(rule_set) -> dict[str, dict]:
    """The DAG params as JSON-schema specs (wrapped in ``Param``) that override one change rule for a run
    (``rules.with_overrides``), each bounded as the rules file bounds its field, so Airflow refuses a conf no
    rule could hold (``lookback_minutes: 10**13`` overflowed the run's date arithmetic)."""
    from include.price_pipeline import rules

    longest = max((r.minutes for pr in rule_set.pairs.values() for r in pr if r.kind == rules.CHANGE), default=5)
    empty = " (empty: the rule's own in the rules file)"
    return {
        "pair": {"default": rule_set.default_pair, "type": "string", "enum": list(rule_set.pairs),
                 "description": "the pair whose change rule the numbers below override for this run"},
        "rule": {"default": None, "type": ["null", "string"], "maxLength": 40,
                 "description": "the name of that pair's change rule they override (empty: its first change rule)"},
        "threshold_pct": {"default": None, "type": ["null", "number"], "minimum": 0,
                          "maximum": rules.MAX_THRESHOLD_PCT,
                          "description": "alert above this absolute % change" + empty},
        "lookback_minutes": {"default": None, "type": ["null", "integer"], "minimum": 5,
                             "maximum": longest + rules.MAX_MINUTES,
                             "description": "previous record no older than this" + empty},
        "notify_on_backfill": {"default": False, "type": "boolean",
                               "description": "notify subscribers for backfills and old windows too"},
        "min_abs_move": {"default": None, "type": ["null", "number"], "minimum": 0, "maximum": rules.MAX_PRICE,
                         "description": "also require this move in price units" + empty},
        "repeat_windows": {"default": None, "type": ["null", "integer"], "minimum": 0,
                           "maximum": rules.MAX_COOLDOWN_MINUTES // 5,
                           "description": "suppress a breach within N windows after the last same-direction alert"
                           + empty},
    }  # fmt: skip
