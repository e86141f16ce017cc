# The data bucket (every prefix of layout.py) and the bucket receiving its access logs.

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_144:Single-region pipeline; versioning covers recovery, and a replica would double storage cost.
  #checkov:skip=CKV2_AWS_62:No event notifications by design: the DAG's S3KeySensor lists one window prefix (layout.ingestion_window_prefix).
  bucket = local.bucket_name
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.s3_encryption == "SSE-KMS" ? "aws:kms" : "AES256"
      kms_master_key_id = var.s3_encryption == "SSE-KMS" ? aws_kms_key.pipeline.arn : null
    }
    bucket_key_enabled = var.s3_encryption == "SSE-KMS"
  }
}

# What is kept (README "Bad input" says the same): raw objects until 90 days after upload (by then their
# window's canonical CSV or quarantine copy holds what they gave; a per-object "ingested" tag cost a request
# per pair and window), quarantine copies 180 days, canonical CSVs, Parquet and the ledger with every version
# forever.
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "expire-raw-records"
    status = "Enabled"
    filter {
      prefix = var.ingestion_prefix
    }
    expiration {
      days = var.ingestion_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    # An expiration in days cannot carry this: the delete marker left once a raw object's last version is gone.
    id     = "raw-delete-markers"
    status = "Enabled"
    filter {
      prefix = var.ingestion_prefix
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "expire-quarantine"
    status = "Enabled"
    filter {
      prefix = var.quarantine_prefix
    }
    expiration {
      days = var.quarantine_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    # Bucket-wide, uploads only: the ledger, canonical CSV and Parquet keep every version.
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.bucket]
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.deny_insecure_transport["data"].json

  depends_on = [aws_s3_bucket_public_access_block.bucket]
}

resource "aws_s3_bucket_logging" "data" {
  bucket        = aws_s3_bucket.data.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3-access/${local.bucket_name}/"
}

# ------------------------------------------------------------------------------------ access logs

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_144:Access logs are an audit aid, not data to replicate across regions.
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports only SSE-S3 on the target bucket, not SSE-KMS.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to new access-log objects.
  bucket = "${local.bucket_name}-logs"
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.access_log_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.bucket]
}

data "aws_iam_policy_document" "access_logs" {
  source_policy_documents = [data.aws_iam_policy_document.deny_insecure_transport["access_logs"].json]

  statement {
    sid       = "S3ServerAccessLogDelivery"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/s3-access/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.data.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = data.aws_iam_policy_document.access_logs.json

  depends_on = [aws_s3_bucket_public_access_block.bucket]
}

# ------------------------------------------------------------------------------------ both buckets

# The same hardening for the data bucket and its access-log bucket: private, owner-enforced,
# versioned, TLS only.
locals {
  buckets = {
    data        = aws_s3_bucket.data
    access_logs = aws_s3_bucket.access_logs
  }
}

resource "aws_s3_bucket_public_access_block" "bucket" {
  for_each                = local.buckets
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "bucket" {
  for_each = local.buckets
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "bucket" {
  for_each = local.buckets
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

data "aws_iam_policy_document" "deny_insecure_transport" {
  for_each = local.buckets
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

# Where these blocks were before they were shared (no replacement on apply).
moved {
  from = aws_s3_bucket_public_access_block.data
  to   = aws_s3_bucket_public_access_block.bucket["data"]
}

moved {
  from = aws_s3_bucket_public_access_block.access_logs
  to   = aws_s3_bucket_public_access_block.bucket["access_logs"]
}

moved {
  from = aws_s3_bucket_ownership_controls.data
  to   = aws_s3_bucket_ownership_controls.bucket["data"]
}

moved {
  from = aws_s3_bucket_ownership_controls.access_logs
  to   = aws_s3_bucket_ownership_controls.bucket["access_logs"]
}

moved {
  from = aws_s3_bucket_versioning.data
  to   = aws_s3_bucket_versioning.bucket["data"]
}

moved {
  from = aws_s3_bucket_versioning.access_logs
  to   = aws_s3_bucket_versioning.bucket["access_logs"]
}
