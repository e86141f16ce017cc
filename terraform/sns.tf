# Alert and ops topics: KMS-encrypted, TLS only; email subscriptions and the alert topic's filtered ones from variables.

resource "aws_sns_topic" "alerts" {
  name              = var.alert_topic_name
  display_name      = "Price alerts"
  kms_master_key_id = aws_kms_key.pipeline.arn
}

resource "aws_sns_topic" "ops" {
  name              = var.ops_topic_name
  display_name      = "Price pipeline ops"
  kms_master_key_id = aws_kms_key.pipeline.arn
}

data "aws_iam_policy_document" "topic" {
  for_each = { alerts = aws_sns_topic.alerts.arn, ops = aws_sns_topic.ops.arn }

  statement {
    # What the default topic policy grants, kept for the account (IAM policies then decide).
    sid    = "AccountManagesAndPublishes"
    effect = "Allow"
    actions = [
      "sns:GetTopicAttributes",
      "sns:SetTopicAttributes",
      "sns:AddPermission",
      "sns:RemovePermission",
      "sns:DeleteTopic",
      "sns:Subscribe",
      "sns:ListSubscriptionsByTopic",
      "sns:Publish",
    ]
    resources = [each.value]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublish"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [each.value]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sns:Publish", "sns:Subscribe", "sns:Receive"]
    resources = [each.value]
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

resource "aws_sns_topic_policy" "alerts" {
  arn    = aws_sns_topic.alerts.arn
  policy = data.aws_iam_policy_document.topic["alerts"].json
}

resource "aws_sns_topic_policy" "ops" {
  arn    = aws_sns_topic.ops.arn
  policy = data.aws_iam_policy_document.topic["ops"].json
}

resource "aws_sns_topic_subscription" "alert_emails" {
  for_each  = toset(var.alert_emails)
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = each.value
}

resource "aws_sns_topic_subscription" "alerts" {
  for_each = { for s in var.alert_subscriptions : "${s.protocol} ${s.endpoint}" => s }

  topic_arn           = aws_sns_topic.alerts.arn
  protocol            = each.value.protocol
  endpoint            = each.value.endpoint
  filter_policy       = each.value.filter_policy
  filter_policy_scope = each.value.filter_policy == null ? null : "MessageAttributes"

  lifecycle {
    precondition {
      condition     = !(each.value.protocol == "email" && contains(var.alert_emails, each.value.endpoint))
      error_message = "${each.value.endpoint} is in alert_emails too (every alert): keep it in one of the two."
    }
  }
}

resource "aws_sns_topic_subscription" "ops_emails" {
  for_each  = toset(var.ops_emails)
  topic_arn = aws_sns_topic.ops.arn
  protocol  = "email"
  endpoint  = each.value
}
