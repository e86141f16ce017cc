# Defaults mirror include/price_pipeline/settings.py and layout.py; tests/infra/test_terraform.py
# checks that they agree.

variable "aws_region" {
  description = "AWS region of every resource."
  type        = string
  default     = "us-east-1"
}

variable "project" {
  description = "Name stem of the shared resources (bucket, KMS alias, policies, catalog database)."
  type        = string
  default     = "price-notification"
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default = {
    project = "price-notification"
  }
}

# ------------------------------------------------------------------------------------ bucket

variable "bucket_name" {
  description = "Data bucket (PRICE_BUCKET). Empty: <project>-<account id>-<region>, unique per account."
  type        = string
  default     = ""
}

variable "ingestion_prefix" {
  description = "PRICE_INGESTION_PREFIX: where producers write raw records."
  type        = string
  default     = "crypto/01-data-ingestion/"

  validation {
    condition     = can(regex("^[^/].*/$", var.ingestion_prefix))
    error_message = "A prefix ends with / and does not start with one."
  }
}

variable "analysis_prefix" {
  description = "PRICE_ANALYSIS_PREFIX: canonical CSV written by the Glue job."
  type        = string
  default     = "crypto/02-data-analysis/"

  validation {
    condition     = can(regex("^[^/].*/$", var.analysis_prefix))
    error_message = "A prefix ends with / and does not start with one."
  }
}

variable "changes_prefix" {
  description = "PRICE_CHANGES_PREFIX: ledger: one object per window, a JSON line per pair."
  type        = string
  default     = "crypto/03-price-changes/"

  validation {
    condition     = can(regex("^[^/].*/$", var.changes_prefix))
    error_message = "A prefix ends with / and does not start with one."
  }
}

variable "quarantine_prefix" {
  description = "PRICE_QUARANTINE_PREFIX: copies of objects that failed checks."
  type        = string
  default     = "crypto/99-quarantine/"

  validation {
    condition     = can(regex("^[^/].*/$", var.quarantine_prefix))
    error_message = "A prefix ends with / and does not start with one."
  }
}

variable "s3_encryption" {
  description = "Default encryption of the data bucket: SSE-KMS (the pipeline's customer key) or SSE-S3."
  type        = string
  default     = "SSE-KMS"

  validation {
    condition     = contains(["SSE-KMS", "SSE-S3"], var.s3_encryption)
    error_message = "s3_encryption is SSE-KMS or SSE-S3."
  }
}

variable "ingestion_expiration_days" {
  description = "Raw records expire this many days after upload: a window no run normalized by then (Airflow down, catchup off) must be backfilled before."
  type        = number
  default     = 90

  validation {
    condition     = var.ingestion_expiration_days >= 1
    error_message = "At least one day."
  }
}

variable "quarantine_expiration_days" {
  description = "Quarantined copies expire after this many days (kept longer than raw records)."
  type        = number
  default     = 180

  validation {
    condition     = var.quarantine_expiration_days >= 1
    error_message = "At least one day."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Overwritten or deleted versions of raw records and quarantine copies are kept this many days (the ledger, canonical CSV and Parquet keep every version)."
  type        = number
  default     = 30
}

variable "access_log_expiration_days" {
  description = "S3 server access logs of the data bucket are kept this many days."
  type        = number
  default     = 365
}

# ------------------------------------------------------------------------------------ Glue

variable "glue_job_name" {
  description = "PRICE_GLUE_JOB_NAME: the Glue Python shell job."
  type        = string
  default     = "price-normalize-record"
}

variable "glue_role_name" {
  description = "PRICE_GLUE_ROLE_NAME: the IAM role the Glue job runs as."
  type        = string
  default     = "price-glue-job"
}

variable "rules_file" {
  description = "PRICE_RULES_FILE: the pairs and alert rules (JSON), relative to the repository root."
  type        = string
  default     = "include/rules/default.json"
}

variable "max_object_bytes" {
  description = "PRICE_MAX_OBJECT_BYTES: raw objects above this are quarantined unread."
  type        = number
  default     = 1048576

  validation {
    condition     = var.max_object_bytes >= 1024 && floor(var.max_object_bytes) == var.max_object_bytes
    error_message = "A whole number of bytes, at least 1024."
  }
}

variable "glue_timeout_minutes" {
  description = "A job run still going after this many minutes is stopped (one window takes seconds)."
  type        = number
  default     = 10
}

# ------------------------------------------------------------------------------------ exchange feed

variable "exchange_url" {
  description = "PRICE_EXCHANGE_URL: base URL the exchange feed (price_exchange_feed) sends ccxt's public API calls to, e.g. a proxy's https://<host>/api/v3; empty: each exchange's own public API (Binance: https://api.binance.com), which needs no API key. Either way Airflow needs outbound HTTPS (443) to it."
  type        = string
  default     = ""

  validation {
    # The MWAA startup script exports it in single quotes; egress is documented for HTTPS only.
    condition     = can(regex("^(https://[^\\s'\"]+)?$", var.exchange_url))
    error_message = "exchange_url is empty or an https:// URL without spaces or quotes."
  }
}

# ------------------------------------------------------------------------------------ SNS

variable "alert_topic_name" {
  description = "Topic of PRICE_ALERT_TOPIC_ARN: subscribers receive price alerts."
  type        = string
  default     = "price-alerts"
}

variable "ops_topic_name" {
  description = "Topic of PRICE_OPS_TOPIC_ARN: pipeline health (failures, stale feed, quarantine)."
  type        = string
  default     = "price-pipeline-ops"
}

variable "alert_emails" {
  description = "Email addresses subscribed to the alert topic, every alert (each must confirm by mail)."
  type        = list(string)
  default     = []
}

# Who gets which alert (README): the filter policy is SNS's own JSON on the alert's message attributes, the
# names of include/price_pipeline/alerts.py ATTRIBUTES; make run's local/alert_subscriptions.json takes the same.
variable "alert_subscriptions" {
  description = "Subscriptions to the alert topic: protocol, endpoint and an optional SNS filter policy (JSON) on the alert's message attributes."
  type = list(object({
    protocol      = string
    endpoint      = string
    filter_policy = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.alert_subscriptions : contains(["email", "sms", "https", "sqs", "lambda"], s.protocol)])
    error_message = "Each subscription's protocol must be one of email, sms, https, sqs, lambda."
  }
  validation {
    condition     = alltrue([for s in var.alert_subscriptions : trimspace(s.endpoint) != ""])
    error_message = "Each subscription needs an endpoint (an address, a phone number, a URL or an ARN)."
  }
  validation {
    condition = alltrue([for s in var.alert_subscriptions : s.filter_policy == null ? true : try(alltrue([
      for name in keys(jsondecode(s.filter_policy)) : contains(["pair", "rule", "kind", "direction", "change_pct", "symbol"], name)
    ]), false)])
    error_message = "A filter_policy must be a JSON object whose keys are alert attributes: pair, rule, kind, direction, change_pct, symbol."
  }
  validation {
    condition     = length(distinct([for s in var.alert_subscriptions : "${s.protocol} ${s.endpoint}"])) == length(var.alert_subscriptions)
    error_message = "SNS keeps one subscription per protocol and endpoint: merge the filters of a repeated endpoint into one policy."
  }
}

variable "ops_emails" {
  description = "Email addresses subscribed to the ops topic (each must confirm by mail)."
  type        = list(string)
  default     = []
}

# ------------------------------------------------------------------------------------ KMS, catalog

variable "kms_deletion_window_days" {
  description = "Waiting period before the pipeline's KMS key is deleted after a destroy."
  type        = number
  default     = 30
}

variable "catalog_database_name" {
  description = "Glue Data Catalog database holding the history tables for Athena."
  type        = string
  default     = "price_notification"
}

variable "history_first_year" {
  description = "First year of the partition projection range of the history tables."
  type        = number
  default     = 2017
}

variable "history_last_year" {
  description = "Last year of the partition projection range (queries without a year filter scan the range)."
  type        = number
  default     = 2035
}

# ------------------------------------------------------------------------------------ Airflow

variable "airflow_policy_name" {
  description = "Name of the IAM policy with exactly what the DAGs need."
  type        = string
  default     = "price-notification-airflow"
}

variable "airflow_role_name" {
  description = "Existing IAM role of a self-hosted Airflow (instance or task role) to attach the policy to; empty: none."
  type        = string
  default     = ""
}

variable "create_mwaa" {
  description = "Create an Amazon MWAA environment wired to the above (off by default: it costs money)."
  type        = bool
  default     = false
}

variable "mwaa_environment_name" {
  description = "Name of the MWAA environment."
  type        = string
  default     = "price-notification"
}

variable "mwaa_airflow_version" {
  description = "Airflow version of the MWAA environment (one MWAA supports; self-hosted runs the pinned 3.3.2)."
  type        = string
  default     = "3.0.6"
}

variable "mwaa_environment_class" {
  description = "MWAA environment class."
  type        = string
  default     = "mw1.small"
}

variable "mwaa_subnet_ids" {
  description = "Two private subnets (in different AZs, with a route to S3, SNS, Glue, KMS, Logs) for MWAA; the exchange feed and the install of mwaa_requirements from PyPI also need a route to the internet (0.0.0.0/0 through a NAT gateway): this module creates no VPC."
  type        = list(string)
  default     = []
}

variable "mwaa_security_group_ids" {
  description = "Security groups of the MWAA environment (one that allows traffic to itself, and outbound HTTPS (443) for the exchange feed and PyPI)."
  type        = list(string)
  default     = []
}

variable "mwaa_dags_prefix" {
  description = "Where in the data bucket MWAA reads DAGs, its startup script and requirements."
  type        = string
  default     = "airflow/"
}

variable "mwaa_requirements" {
  description = "Python packages MWAA installs on its image (<mwaa_dags_prefix>requirements.txt), with MWAA's own constraints for mwaa_airflow_version: what the DAGs' tasks import beyond MWAA's Airflow, amazon provider and boto3. ccxt (the exchange feed) is in no Airflow constraints file: pinned like requirements.txt."
  type        = list(string)
  default     = ["ccxt==4.5.64", "pyarrow", "apache-airflow-providers-slack"]

  validation {
    condition     = alltrue([for r in var.mwaa_requirements : can(regex("^[A-Za-z0-9][^\\s]*$", r))])
    error_message = "One requirement specifier per entry (e.g. name==1.2.3), no options: MWAA adds the --constraint line."
  }
}
