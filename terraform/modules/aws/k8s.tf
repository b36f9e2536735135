# The Kubernetes objects of each tenant's workers, rendered from deploy/k8s/ with the IRSA
# roles created above. Output only (no kubernetes provider here): apply them with kubectl or
# any GitOps tool, once KEDA is installed with its operator annotated with keda_role_arn.

locals {
  k8s_dir = "${path.module}/../../../deploy/k8s"

  worker_values = {
    for t, cfg in var.tenants : t => {
      NAMESPACE    = var.k8s_namespace
      NAME         = "audioguard-worker-${t}"
      TENANT       = t
      TENANTS_JSON = jsonencode([t])
      TRANSPORT    = "kinesis"
      IMAGE        = var.worker_image
      # one process per pod; with kinesis_leases, more pods share the shards (docs/scaling.md)
      PROCESSES               = "1"
      KINESIS_LEASES          = tostring(cfg.kinesis_leases)
      KINESIS_LEASE_TABLE     = aws_dynamodb_table.leases[t].name
      IDENTITY_ANNOTATION     = "eks.amazonaws.com/role-arn"
      IDENTITY                = aws_iam_role.worker[t].arn
      KAFKA_BOOTSTRAP_SERVERS = ""
      GCP_PROJECT             = ""
      AWS_REGION              = data.aws_region.this.name
      STORE_URL               = var.store_url
      S3_ENDPOINT_URL         = "https://s3.${data.aws_region.this.name}.amazonaws.com"
      S3_REGION               = data.aws_region.this.name
      S3_LOCATIONS_JSON       = jsonencode({ (t) = ["${aws_s3_bucket.audio.bucket}/${t}"] })
      MIN_REPLICAS            = tostring(cfg.min_workers)
      MAX_REPLICAS            = tostring(cfg.max_workers)
      LAG_TARGET              = "400"
      ITERATOR_AGE_TARGET_MS  = "30000"
    }
  }
}
