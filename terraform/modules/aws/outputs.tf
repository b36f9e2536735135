output "tenants" {
  description = "Per tenant: its stream names, S3 prefix and worker IAM role."
  value = {
    for t in keys(var.tenants) : t => {
      arrivals_stream = aws_kinesis_stream.arrivals[t].name
      verdicts_stream = aws_kinesis_stream.verdicts[t].name
      dlq_stream      = aws_kinesis_stream.dlq[t].name
      lease_table     = aws_dynamodb_table.leases[t].name
      audio_prefix    = "s3://${aws_s3_bucket.audio.bucket}/${t}/"
      worker_role_arn = aws_iam_role.worker[t].arn
    }
  }
}

output "keda_role_arn" {
  description = "Annotate KEDA's operator ServiceAccount with eks.amazonaws.com/role-arn = this."
  value       = aws_iam_role.keda.arn
}

output "worker_manifests" {
  description = "Per tenant, the Kubernetes YAML of its worker (namespace, worker, KEDA scaler)."
  value = {
    for t, v in local.worker_values : t => join("\n---\n", [
      templatefile("${local.k8s_dir}/namespace.yaml", v),
      templatefile("${local.k8s_dir}/worker.yaml", v),
      templatefile("${local.k8s_dir}/keda/kinesis.yaml", v),
    ])
  }
}
