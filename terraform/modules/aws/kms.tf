# One customer-managed key for the module's streams and bucket, rotated yearly. The key
# policy leaves administration to the account; use is granted through IAM policies that pin
# the encryption context to one tenant's streams and prefix (iam.tf).

data "aws_caller_identity" "this" {}
data "aws_region" "this" {}
data "aws_partition" "this" {}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_111: a key policy's "*" resource means this key only; this is AWS's default key policy statement (the account administers its own key through IAM).
  # checkov:skip=CKV_AWS_356: same: in a key policy the resource "*" is the key itself, not every resource.
  # checkov:skip=CKV_AWS_109: same: without this statement the key becomes unmanageable (AWS KMS documentation, "Default key policy").
  statement {
    sid       = "AccountAdministersTheKey"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.this.partition}:iam::${data.aws_caller_identity.this.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "data" {
  description             = "${var.name_prefix}: audio, arrivals, verdicts and dead letters"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name_prefix}-data"
  target_key_id = aws_kms_key.data.key_id
}
