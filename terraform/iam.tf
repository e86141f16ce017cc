# Least-privilege IAM: the Glue job's role, and the policy the Airflow execution role needs.

locals {
  bucket_arn          = aws_s3_bucket.data.arn
  glue_job_arn        = "arn:${local.partition}:glue:${local.region}:${local.account_id}:job/${var.glue_job_name}"
  glue_log_groups_arn = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.glue_log_group_stem}*"
}

# ------------------------------------------------------------------------------------ Glue job role

data "aws_iam_policy_document" "glue_assume" {
  statement {
    sid     = "GlueAssumesRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["glue.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "glue_job" {
  name               = var.glue_role_name
  description        = "Runs the ${var.glue_job_name} Glue job: read raw records, write CSV and quarantine"
  assume_role_policy = data.aws_iam_policy_document.glue_assume.json
}

data "aws_iam_policy_document" "glue_job" {
  statement {
    # The job lists one window prefix under the ingestion prefix (layout.ingestion_window_prefix).
    sid       = "ListIngestionPrefix"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.ingestion_prefix}*"]
    }
  }

  statement {
    # Raw records (read, and the source of a quarantine copy), the job script itself and its bundle.
    sid     = "ReadRawRecordsAndScript"
    effect  = "Allow"
    actions = ["s3:GetObject"]
    resources = [
      "${local.bucket_arn}/${var.ingestion_prefix}*",
      "${local.bucket_arn}/${local.glue_script_key}",
      "${local.bucket_arn}/${local.glue_bundle_key}",
    ]
  }

  statement {
    sid     = "WriteCanonicalCsvAndQuarantine"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    resources = [
      "${local.bucket_arn}/${var.analysis_prefix}*",
      "${local.bucket_arn}/${var.quarantine_prefix}*",
    ]
  }

  statement {
    # SSE-KMS objects, and the security configuration's encrypted logs.
    sid       = "UsePipelineKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"]
    resources = [aws_kms_key.pipeline.arn]
  }

  statement {
    sid    = "WriteJobLogs"
    effect = "Allow"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:AssociateKmsKey",
    ]
    resources = [
      local.glue_log_groups_arn,
      "${local.glue_log_groups_arn}:log-stream:*",
    ]
  }
}

resource "aws_iam_role_policy" "glue_job" {
  name   = "${var.glue_job_name}-least-privilege"
  role   = aws_iam_role.glue_job.id
  policy = data.aws_iam_policy_document.glue_job.json
}

# ------------------------------------------------------------------------------------ Airflow

# Exactly the calls the DAGs make (S3KeySensor, GlueJobOperator, the ledger, the exchange feed's records,
# SNS publish), on exactly these resources. Attach it to the self-hosted Airflow's role
# (var.airflow_role_name) or to MWAA's.
data "aws_iam_policy_document" "airflow" {
  statement {
    sid       = "ListPipelinePrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        "${var.ingestion_prefix}*",
        "${var.analysis_prefix}*",
        "${var.changes_prefix}*",
        "${var.quarantine_prefix}*",
        "${local.glue_scripts_prefix}*",
        "${local.parquet_prefix}*",
      ]
    }
  }

  statement {
    # Sensor and checks read raw records, the canonical CSV, the ledger and quarantine notes; the
    # GlueJobOperator heads the script key before uploading (replace_script_file=False).
    sid     = "ReadPipelineObjects"
    effect  = "Allow"
    actions = ["s3:GetObject"]
    resources = [
      "${local.bucket_arn}/${var.ingestion_prefix}*",
      "${local.bucket_arn}/${var.analysis_prefix}*",
      "${local.bucket_arn}/${var.changes_prefix}*",
      "${local.bucket_arn}/${var.quarantine_prefix}*",
      "${local.bucket_arn}/${local.glue_scripts_prefix}*",
    ]
  }

  statement {
    # The bulk history DAG also rewrites the monthly Parquet objects.
    sid     = "WriteLedgerGlueScriptAndParquet"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    resources = [
      "${local.bucket_arn}/${var.changes_prefix}*",
      "${local.bucket_arn}/${local.glue_scripts_prefix}*",
      "${local.bucket_arn}/${local.parquet_prefix}*",
    ]
  }

  statement {
    # The exchange feed (price_exchange_feed, and price_history_backfill's fetch_exchange_history) writes
    # each pair's candle to its ingestion key, once (If-None-Match: *); it lists and reads there as above.
    sid       = "WriteExchangeFeedRecords"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/${var.ingestion_prefix}*"]
  }

  statement {
    sid    = "RunTheGlueJob"
    effect = "Allow"
    actions = [
      "glue:GetJob",
      "glue:CreateJob",
      "glue:UpdateJob",
      "glue:StartJobRun",
      "glue:GetJobRun",
      "glue:GetJobRuns",
      "glue:BatchStopJobRun",
    ]
    resources = [local.glue_job_arn]
  }

  statement {
    sid       = "PassGlueRoleToGlueOnly"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.glue_job.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["glue.amazonaws.com"]
    }
  }

  statement {
    # GlueJobHook resolves iam_role_name to its ARN.
    sid       = "ReadGlueRole"
    effect    = "Allow"
    actions   = ["iam:GetRole"]
    resources = [aws_iam_role.glue_job.arn]
  }

  statement {
    # GlueJobOperator(verbose=True) streams the run's output and error log groups.
    sid     = "ReadGlueJobLogs"
    effect  = "Allow"
    actions = ["logs:FilterLogEvents", "logs:GetLogEvents"]
    resources = [
      local.glue_log_groups_arn,
      "${local.glue_log_groups_arn}:log-stream:*",
    ]
  }

  statement {
    sid       = "PublishAlertsAndOps"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alerts.arn, aws_sns_topic.ops.arn]
  }

  statement {
    # SSE-KMS objects and the encrypted topics.
    sid       = "UsePipelineKey"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.pipeline.arn]
  }
}

resource "aws_iam_policy" "airflow" {
  name        = var.airflow_policy_name
  description = "What the ${var.project} DAGs need on the bucket, Glue job, topics and key"
  policy      = data.aws_iam_policy_document.airflow.json
}

resource "aws_iam_role_policy_attachment" "airflow" {
  count      = var.airflow_role_name != "" ? 1 : 0
  role       = var.airflow_role_name
  policy_arn = aws_iam_policy.airflow.arn
}
