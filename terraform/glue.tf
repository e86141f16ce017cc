# The Glue Python shell job that normalizes one window's raw record to the canonical CSV.

resource "aws_s3_object" "glue_script" {
  bucket = aws_s3_bucket.data.id
  key    = local.glue_script_key
  source = local.glue_script_file
  # Not etag: with SSE-KMS an object's ETag is not its MD5, so etag would show a diff on every plan.
  source_hash  = filemd5(local.glue_script_file)
  content_type = "text/x-python"
  kms_key_id   = var.s3_encryption == "SSE-KMS" ? aws_kms_key.pipeline.arn : null

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.data]
}

# The job's package (include/glue/price_glue) and layout.py, which the script imports: built the same on
# every machine (include/price_pipeline/glue_bundle.py), so an unchanged bundle is not uploaded again.
resource "aws_s3_object" "glue_bundle" {
  bucket       = aws_s3_bucket.data.id
  key          = local.glue_bundle_key
  source       = local.glue_bundle_file
  source_hash  = filemd5(local.glue_bundle_file)
  content_type = "application/zip"
  kms_key_id   = var.s3_encryption == "SSE-KMS" ? aws_kms_key.pipeline.arn : null

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.data]
}

resource "aws_glue_security_configuration" "job" {
  name = "${var.glue_job_name}-encryption"

  encryption_configuration {
    cloudwatch_encryption {
      cloudwatch_encryption_mode = "SSE-KMS"
      kms_key_arn                = aws_kms_key.pipeline.arn
    }

    job_bookmarks_encryption {
      job_bookmarks_encryption_mode = "CSE-KMS"
      kms_key_arn                   = aws_kms_key.pipeline.arn
    }

    s3_encryption {
      s3_encryption_mode = var.s3_encryption
      kms_key_arn        = var.s3_encryption == "SSE-KMS" ? aws_kms_key.pipeline.arn : null
    }
  }
}

resource "aws_glue_job" "normalize" {
  name                   = var.glue_job_name
  description            = "Normalize one window's raw price records to canonical CSV, quarantine the rest"
  role_arn               = aws_iam_role.glue_job.arn
  glue_version           = "3.0"
  max_capacity           = 0.0625
  max_retries            = 0
  timeout                = var.glue_timeout_minutes
  security_configuration = aws_glue_security_configuration.job.name

  command {
    name            = "pythonshell"
    python_version  = "3.9"
    script_location = "s3://${aws_s3_bucket.data.id}/${aws_s3_object.glue_script.key}"
  }

  execution_property {
    # One run per window; as many as the DAG runs windows at once (settings.glue_job_spec).
    max_concurrent_runs = 16
  }

  # The same arguments the DAG passes (it adds --window_start per run; run arguments win).
  default_arguments = {
    "--additional-python-modules" = local.glue_python_modules
    "--extra-py-files"            = "s3://${aws_s3_bucket.data.id}/${aws_s3_object.glue_bundle.key}"
    "--bucket"                    = aws_s3_bucket.data.id
    "--ingestion_prefix"          = var.ingestion_prefix
    "--analysis_prefix"           = var.analysis_prefix
    "--quarantine_prefix"         = var.quarantine_prefix
    "--pairs"                     = join(",", local.glue_pairs)
    "--max_object_bytes"          = tostring(var.max_object_bytes)
    "--field_aliases"             = jsonencode(jsondecode(file(local.field_aliases_file)))
  }
}
