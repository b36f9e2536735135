# Per tenant: audioguard-arrivals-<t>, audioguard-verdicts-<t> and the dead-letter stream
# audioguard-dlq-<t> (consumers/tenancy.py's names), KMS-encrypted. Retries happen in place
# in the worker (bounded backoff), then the record goes to the DLQ stream.

resource "aws_kinesis_stream" "arrivals" {
  for_each         = var.tenants
  name             = "audioguard-arrivals-${each.key}"
  shard_count      = each.value.arrivals_shards
  retention_period = each.value.retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.data.arn
  # the KEDA scaler reads GetRecords.IteratorAgeMilliseconds, a stream-level metric
  shard_level_metrics = ["IncomingRecords", "IteratorAgeMilliseconds"]

  stream_mode_details {
    stream_mode = "PROVISIONED"
  }

  tags = { tenant = each.key, app = "audioguard" }
}

resource "aws_kinesis_stream" "verdicts" {
  for_each         = var.tenants
  name             = "audioguard-verdicts-${each.key}"
  retention_period = each.value.retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.data.arn

  stream_mode_details {
    stream_mode = "ON_DEMAND"
  }

  tags = { tenant = each.key, app = "audioguard" }
}

resource "aws_kinesis_stream" "dlq" {
  for_each = var.tenants
  name     = "audioguard-dlq-${each.key}"
  # dead letters wait for a human
  retention_period = each.value.dlq_retention_hours
  encryption_type  = "KMS"
  kms_key_id       = aws_kms_key.data.arn

  stream_mode_details {
    stream_mode = "ON_DEMAND"
  }

  tags = { tenant = each.key, app = "audioguard" }
}
