# One bucket for all tenants' audio, one prefix per tenant (s3://<bucket>/<tenant>/...): the
# per-tenant IAM roles (iam.tf) reach only their own prefix. KMS-encrypted with the module's
# key, versioned, public access blocked, access-logged, TLS only, expired by lifecycle.

resource "aws_s3_bucket" "audio" {
  # checkov:skip=CKV_AWS_144: cross-region replication of user uploads is a data-residency decision per customer; the audio is transient input (expired after audio_retention_days).
  # checkov:skip=CKV2_AWS_62: nothing consumes object-created events; arrivals are published by the platform, not derived from S3 events.
  bucket = "${var.name_prefix}-audio-${data.aws_caller_identity.this.account_id}-${data.aws_region.this.name}"
  tags   = { app = "audioguard" }
}

resource "aws_s3_bucket_public_access_block" "audio" {
  bucket                  = aws_s3_bucket.audio.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "audio" {
  bucket = aws_s3_bucket.audio.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "audio" {
  bucket = aws_s3_bucket.audio.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "audio" {
  bucket = aws_s3_bucket.audio.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "audio" {
  bucket        = aws_s3_bucket.audio.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "audio/"
}

resource "aws_s3_bucket_lifecycle_configuration" "audio" {
  # checkov:skip=CKV_AWS_300: every rule does set abort_incomplete_multipart_upload; checkov cannot expand a dynamic block over var.tenants.
  bucket = aws_s3_bucket.audio.id

  dynamic "rule" {
    for_each = var.tenants
    content {
      id     = "expire-${rule.key}"
      status = "Enabled"
      filter {
        prefix = "${rule.key}/"
      }
      expiration {
        days = rule.value.audio_retention_days
      }
      noncurrent_version_expiration {
        noncurrent_days = 7
      }
      abort_incomplete_multipart_upload {
        days_after_initiation = 1
      }
    }
  }
}

data "aws_iam_policy_document" "audio_bucket" {
  statement {
    sid     = "DenyPlainHttp"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.audio.arn,
      "${aws_s3_bucket.audio.arn}/*",
    ]
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

resource "aws_s3_bucket_policy" "audio" {
  bucket = aws_s3_bucket.audio.id
  policy = data.aws_iam_policy_document.audio_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.audio]
}

# ---------------------------------------------------------------- access logs
resource "aws_s3_bucket" "access_logs" {
  # checkov:skip=CKV_AWS_18: this is the access-log bucket itself; logging it into itself would loop.
  # checkov:skip=CKV_AWS_144: access logs stay in the region of the data they describe.
  # checkov:skip=CKV2_AWS_62: nothing consumes events of the log bucket.
  # checkov:skip=CKV_AWS_145: S3 server access logs can be delivered only to a bucket with SSE-S3 (AES256) default encryption, not SSE-KMS (AWS documentation).
  bucket = "${var.name_prefix}-access-logs-${data.aws_caller_identity.this.account_id}-${data.aws_region.this.name}"
  tags   = { app = "audioguard" }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
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
    id     = "expire-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = 90
    }
    noncurrent_version_expiration {
      noncurrent_days = 7
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# S3 server access logging delivers as the logging service principal, from this account's
# audio bucket only.
data "aws_iam_policy_document" "access_logs" {
  statement {
    sid       = "S3ServerAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/audio/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.audio.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.this.account_id]
    }
  }
  statement {
    sid     = "DenyPlainHttp"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.access_logs.arn,
      "${aws_s3_bucket.access_logs.arn}/*",
    ]
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

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = data.aws_iam_policy_document.access_logs.json

  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}
