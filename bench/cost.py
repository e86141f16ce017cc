"""AWS cost per month of the pipeline's own resources at a 5-minute cadence, from the job configuration
the DAG actually creates, request counts measured on the stand-in, and the one price file
``bench/aws_prices.json``; beside it the same pipeline with a Glue Spark job (2 DPU, 1-minute minimum)."""

from __future__ import annotations

import json
from pathlib import Path

PRICES_PATH = Path(__file__).with_name("aws_prices.json")
#: S3 request classes as S3 prices them (DELETE is free).
S3_PUT_CLASS = {
    "PutObject",
    "PutObjectTagging",
    "CopyObject",
    "PostObject",
    "ListObjectsV2",
    "ListObjects",
    "CreateMultipartUpload",
}
S3_FREE = {"DeleteObject", "DeleteObjects"}
GB = 1024**3


def load_prices(path: Path = PRICES_PATH) -> dict:
    return json.loads(path.read_text())


def glue_run_cost(prices: dict, dpu: float, seconds: float, minimum_seconds: float) -> float:
    """One job run: DPU x billed hours (per second, with the minimum)."""
    return dpu * max(seconds, minimum_seconds) / 3600 * prices["glue"]["dpu_hour"]


def monthly(
    prices: dict,
    job: dict,
    requests_per_window: dict[str, dict[str, int]],
    glue_seconds: float,
    publishes_per_window: float,
    stored_bytes_per_window: float,
    log_bytes_per_run: float,
) -> dict:
    """``{"python_shell": rows, "spark": rows, ...}``: cost lines per month (rows of (item, quantity, USD)).

    ``job`` is the Glue job as GetJob returns it (MaxCapacity, Command.Name); ``requests_per_window``
    maps service -> operation -> count for one live window (SNS publishes are counted separately, as
    ``publishes_per_window``, since only breaching windows publish).
    """
    runs = prices["assumptions"]["runs_per_month"]
    s3 = requests_per_window.get("s3", {})
    put_class = sum(n for op, n in s3.items() if op in S3_PUT_CLASS) * runs
    get_class = sum(n for op, n in s3.items() if op not in S3_PUT_CLASS and op not in S3_FREE) * runs
    logs_api = sum(requests_per_window.get("logs", {}).values()) * runs
    kms_requests = sum(requests_per_window.get("kms", {}).values()) * runs
    log_gb = (log_bytes_per_run + prices["assumptions"]["glue_service_log_bytes_per_run"]) * runs / GB
    stored_gb = stored_bytes_per_window * runs / GB
    shared = [
        (
            "S3 PUT/COPY/LIST requests",
            put_class,
            put_class / 1000 * prices["s3"]["put_copy_post_list_per_1000"],
        ),
        ("S3 GET/HEAD requests", get_class, get_class / 1000 * prices["s3"]["get_head_other_per_1000"]),
        (
            "S3 storage, one month of objects (GB-month)",
            round(stored_gb, 4),
            stored_gb * prices["s3"]["standard_storage_gb_month"],
        ),
        (
            "SNS publishes",
            round(publishes_per_window * runs),
            publishes_per_window * runs / 1e6 * prices["sns"]["publish_per_million"],
        ),
        (
            "CloudWatch Logs ingestion + storage (GB)",
            round(log_gb, 4),
            log_gb * (prices["cloudwatch_logs"]["ingestion_per_gb"] + prices["cloudwatch_logs"]["storage_gb_month"]),
        ),
        (
            "CloudWatch Logs API reads (Glue log streaming)",
            logs_api,
            logs_api / 1000 * prices["cloudwatch_logs"]["api_requests_per_1000"],
        ),
        (
            "KMS key (+ requests; S3 bucket key on)",
            1,
            prices["kms"]["key_month"] + kms_requests / 10000 * prices["kms"]["requests_per_10000"],
        ),
    ]
    dpu = float(job["MaxCapacity"])
    shell_run = glue_run_cost(prices, dpu, glue_seconds, prices["glue"]["python_shell_minimum_seconds"])
    spark_dpu = prices["glue"]["spark_minimum_dpu"]
    spark_run = glue_run_cost(prices, spark_dpu, glue_seconds, prices["glue"]["spark_minimum_seconds"])
    python_shell = [(f"Glue {job['Command']['Name']} {dpu} DPU, {runs} runs", runs, shell_run * runs), *shared]
    spark = [(f"Glue Spark (glueetl) {spark_dpu} DPU, {runs} runs", runs, spark_run * runs), *shared]
    mwaa = prices["mwaa"]["mw1_small_environment_hour"] * 24 * 30
    return {
        "runs_per_month": runs,
        "glue_billed_seconds": max(glue_seconds, prices["glue"]["python_shell_minimum_seconds"]),
        "per_extra_minute": dpu / 60 * prices["glue"]["dpu_hour"] * runs,
        "python_shell": python_shell,
        "python_shell_total": sum(row[2] for row in python_shell),
        "spark": spark,
        "spark_total": sum(row[2] for row in spark),
        "mwaa_month": mwaa,
    }
