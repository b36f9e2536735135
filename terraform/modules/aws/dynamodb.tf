# Per tenant: the Kinesis shard lease table audioguard-kinesis-leases-<t>
# (consumers/transports/kinesis_leases.py, docs/scaling.md). One item per shard of the
# tenant's arrivals stream: owner, counter, checkpoint, parents. It exists for every tenant
# (on-demand billing: an idle table costs nothing but storage) so that switching
# `kinesis_leases` on is a setting, not a migration; the workers read it only then.

resource "aws_dynamodb_table" "leases" {
  for_each     = var.tenants
  name         = "audioguard-kinesis-leases-${each.key}"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "lease_key"

  attribute {
    name = "lease_key"
    type = "S"
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.data.arn
  }

  # checkpoints live here: a restore brings back where every shard was read to
  point_in_time_recovery {
    enabled = true
  }

  deletion_protection_enabled = true

  tags = { tenant = each.key, app = "audioguard" }
}
