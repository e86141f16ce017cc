# Names shared by the files of this module. Prefixes and the script key come from
# include/price_pipeline/layout.py (checked by tests/infra/test_terraform.py).

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = var.aws_region

  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.project}-${local.account_id}-${local.region}"

  # layout.PARQUET_PREFIX and layout.GLUE_SCRIPTS_PREFIX: not settings, fixed by the layout.
  parquet_prefix      = "crypto/02-data-analysis-parquet/"
  glue_scripts_prefix = "artifacts/glue-scripts/"

  # The Glue job script and its field aliases, uploaded/passed as they are in the repository.
  glue_script_file   = "${path.module}/../include/glue/normalize_price_record.py"
  field_aliases_file = "${path.module}/../include/glue/field_aliases.json"
  # The rules file: its default pair, then its other pairs sorted, are the Glue job's --pairs
  # (settings.glue_job_arguments); every pair's slug (layout.pair_slug) is a Parquet partition.
  rules      = jsondecode(file("${path.module}/../${var.rules_file}"))
  glue_pairs = concat([local.rules.default_pair], sort([for pair in keys(local.rules.pairs) : pair if pair != local.rules.default_pair]))
  pair_slugs = sort([for pair in keys(local.rules.pairs) : upper(replace(pair, "/", "_"))])
  # Same key as the Airflow GlueJobOperator's upload: <s3_artifacts_prefix><script file name>.
  glue_script_key = "${local.glue_scripts_prefix}normalize_price_record.py"
  # The job's package and layout.py in one zip, its --extra-py-files (glue_bundle.BUNDLE_PATH and KEY):
  # `make glue-bundle` builds it before a plan.
  glue_bundle_file = "${path.module}/../build/price_glue.zip"
  glue_bundle_key  = "${local.glue_scripts_prefix}price_glue.zip"

  # Python shell jobs log to /aws-glue/python-jobs/{output,error}; with a security configuration
  # Glue appends the configuration and role to the group name, so permissions cover the stem.
  glue_log_group_stem = "/aws-glue/python-jobs"

  # Third-party module the job script imports on Glue (pinned like requirements.txt).
  glue_python_modules = "defusedxml==0.7.1"

  # Columns of the canonical CSV, in order (layout.CANONICAL_COLUMNS).
  canonical_columns = [
    { name = "timestamp", type = "string" },
    { name = "pair", type = "string" },
    { name = "open", type = "double" },
    { name = "high", type = "double" },
    { name = "low", type = "double" },
    { name = "close", type = "double" },
    { name = "volume", type = "double" },
    { name = "quote_volume", type = "double" },
    { name = "weighted_average", type = "double" },
    { name = "source_key", type = "string" },
    { name = "source_format", type = "string" },
  ]
}

# ------------------------------------------------------------------------------------ KMS

# One customer key for the bucket, both topics, the Glue security configuration and its logs.
resource "aws_kms_key" "pipeline" {
  description             = "${var.project}: S3 data, SNS topics, Glue job logs and bookmarks"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # IAM policies of the account decide who else may use the key (Glue role, Airflow policy).
        Sid       = "AccountAdministersKeyThroughIam"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncryptsPipelineLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = [
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws-glue/*",
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:airflow-${var.mwaa_environment_name}-*",
            ]
          }
        }
      },
      {
        # CloudWatch alarms may publish to the (encrypted) ops topic.
        Sid       = "CloudWatchAlarmsPublishToEncryptedTopics"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = ["kms:GenerateDataKey*", "kms:Decrypt"]
        Resource  = "*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "pipeline" {
  name          = "alias/${var.project}"
  target_key_id = aws_kms_key.pipeline.key_id
}
