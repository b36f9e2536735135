# Per tenant: an IAM role for that tenant's worker pods (IRSA: only the Kubernetes
# ServiceAccount audioguard-worker-<tenant> may assume it), allowed to read its arrivals
# stream, write its verdicts and dead-letter streams, read its own S3 prefix, and use the
# KMS key only for those streams and that prefix (the encryption context pins them). Every
# ARN below is indexed by each.key; tests/unit/test_deploy_terraform.py checks that no
# statement reaches another tenant's streams or prefix.

data "aws_iam_policy_document" "worker_trust" {
  for_each = var.tenants
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.k8s_namespace}:audioguard-worker-${each.key}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  for_each           = var.tenants
  name               = "audioguard-worker-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.worker_trust[each.key].json
  tags               = { tenant = each.key, app = "audioguard" }
}

data "aws_iam_policy_document" "worker" {
  for_each = var.tenants

  statement {
    sid = "ReadArrivals"
    actions = [
      "kinesis:DescribeStream",
      "kinesis:DescribeStreamSummary",
      "kinesis:ListShards",
      "kinesis:GetShardIterator",
      "kinesis:GetRecords",
    ]
    resources = [aws_kinesis_stream.arrivals[each.key].arn]
  }

  statement {
    sid = "WriteVerdictsAndDeadLetters"
    actions = [
      "kinesis:DescribeStreamSummary",
      "kinesis:PutRecord",
      "kinesis:PutRecords",
    ]
    resources = [
      aws_kinesis_stream.verdicts[each.key].arn,
      aws_kinesis_stream.dlq[each.key].arn,
    ]
  }

  # the shard leases (kinesis_leases): read, create and conditionally update items; the
  # worker never creates or deletes the table (CreateTable is not granted: Terraform owns it)
  statement {
    sid = "OwnShardLeases"
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:Scan",
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
    ]
    resources = [aws_dynamodb_table.leases[each.key].arn]
  }

  statement {
    sid       = "UseKeyForOwnLeases"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:aws:dynamodb:tableName"
      values   = [aws_dynamodb_table.leases[each.key].name]
    }
  }

  statement {
    sid       = "ReadOwnAudio"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${aws_s3_bucket.audio.arn}/${each.key}/*"]
  }

  statement {
    sid       = "ListOwnPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.audio.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${each.key}/*"]
    }
  }

  statement {
    sid       = "UseKeyForOwnStreams"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:aws:kinesis:arn"
      values = [
        aws_kinesis_stream.arrivals[each.key].arn,
        aws_kinesis_stream.verdicts[each.key].arn,
        aws_kinesis_stream.dlq[each.key].arn,
      ]
    }
  }

  statement {
    sid       = "UseKeyForOwnAudio"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]
    # with an S3 Bucket Key the context is the bucket ARN, so the prefix is enforced by the
    # s3:GetObject statement above; the context still keeps the key off other buckets
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = [aws_s3_bucket.audio.arn]
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  for_each = var.tenants
  name     = "audioguard-worker-${each.key}"
  role     = aws_iam_role.worker[each.key].id
  policy   = data.aws_iam_policy_document.worker[each.key].json
}

# KEDA's operator reads GetRecords.IteratorAgeMilliseconds from CloudWatch. GetMetricData
# supports no resource-level restriction (AWS service authorization reference): "*" is the
# only possible resource, and the action is read-only.
data "aws_iam_policy_document" "keda_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.eks_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.keda_service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.eks_oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "keda" {
  statement {
    sid       = "ReadIteratorAge"
    actions   = ["cloudwatch:GetMetricData"]
    resources = ["*"]
  }
}

resource "aws_iam_role" "keda" {
  name               = "${var.name_prefix}-keda-operator"
  assume_role_policy = data.aws_iam_policy_document.keda_trust.json
  tags               = { app = "audioguard" }
}

resource "aws_iam_role_policy" "keda" {
  name   = "read-kinesis-iterator-age"
  role   = aws_iam_role.keda.id
  policy = data.aws_iam_policy_document.keda.json
}
