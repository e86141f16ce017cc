# One output per deployment-decided PRICE_* setting (include/price_pipeline/settings.py), named
# exactly like the environment variable, so `terraform output -json` maps straight onto the DAG's
# environment (docs/deploy.md). tests/infra/test_terraform.py checks the set against settings.py.
# Per-run knobs (threshold, lookback, sensor timing) and the connection id stay Airflow-side.

locals {
  price_env = {
    PRICE_BUCKET            = aws_s3_bucket.data.id
    PRICE_INGESTION_PREFIX  = var.ingestion_prefix
    PRICE_ANALYSIS_PREFIX   = var.analysis_prefix
    PRICE_CHANGES_PREFIX    = var.changes_prefix
    PRICE_QUARANTINE_PREFIX = var.quarantine_prefix
    PRICE_ALERT_TOPIC_ARN   = aws_sns_topic.alerts.arn
    PRICE_OPS_TOPIC_ARN     = aws_sns_topic.ops.arn
    PRICE_GLUE_JOB_NAME     = aws_glue_job.normalize.name
    PRICE_GLUE_ROLE_NAME    = aws_iam_role.glue_job.name
    PRICE_MAX_OBJECT_BYTES  = tostring(var.max_object_bytes)
    PRICE_RULES_FILE        = var.rules_file
    PRICE_EXCHANGE_URL      = var.exchange_url
  }
}

output "PRICE_BUCKET" {
  description = "S3 bucket for every prefix below"
  value       = local.price_env.PRICE_BUCKET
}

output "PRICE_INGESTION_PREFIX" {
  description = "where producers write raw records"
  value       = local.price_env.PRICE_INGESTION_PREFIX
}

output "PRICE_ANALYSIS_PREFIX" {
  description = "canonical CSV written by the Glue job"
  value       = local.price_env.PRICE_ANALYSIS_PREFIX
}

output "PRICE_CHANGES_PREFIX" {
  description = "ledger: one object per window, a JSON line per pair"
  value       = local.price_env.PRICE_CHANGES_PREFIX
}

output "PRICE_QUARANTINE_PREFIX" {
  description = "copies of objects that failed checks"
  value       = local.price_env.PRICE_QUARANTINE_PREFIX
}

output "PRICE_ALERT_TOPIC_ARN" {
  description = "SNS topic subscribers receive price alerts on"
  value       = local.price_env.PRICE_ALERT_TOPIC_ARN
}

output "PRICE_OPS_TOPIC_ARN" {
  description = "SNS topic for pipeline health (failures, stale feed, quarantine)"
  value       = local.price_env.PRICE_OPS_TOPIC_ARN
}

output "PRICE_GLUE_JOB_NAME" {
  description = "Glue Python shell job name"
  value       = local.price_env.PRICE_GLUE_JOB_NAME
}

output "PRICE_GLUE_ROLE_NAME" {
  description = "IAM role the Glue job runs as"
  value       = local.price_env.PRICE_GLUE_ROLE_NAME
}

output "PRICE_MAX_OBJECT_BYTES" {
  description = "raw objects above this are quarantined unread"
  value       = local.price_env.PRICE_MAX_OBJECT_BYTES
}

output "PRICE_RULES_FILE" {
  description = "pairs and alert rules (JSON; relative to the repository root); the default pair among them"
  value       = local.price_env.PRICE_RULES_FILE
}

output "PRICE_EXCHANGE_URL" {
  description = "the exchange feed's public API base URL (ccxt's urls['api']['public']); empty: each exchange's own"
  value       = local.price_env.PRICE_EXCHANGE_URL
}
