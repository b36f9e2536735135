output "gcp_tenants" {
  description = "Per tenant, its Pub/Sub names, bucket and service account."
  value       = module.gcp.tenants
}

output "aws_tenants" {
  description = "Per tenant, its streams, S3 prefix and IAM role."
  value       = module.aws.tenants
}

output "gcp_worker_manifests" {
  description = "Per tenant, the Kubernetes YAML of its Pub/Sub workers."
  value       = module.gcp.worker_manifests
}

output "aws_worker_manifests" {
  description = "Per tenant, the Kubernetes YAML of its Kinesis workers."
  value       = module.aws.worker_manifests
}

output "keda_identities" {
  description = "Annotate KEDA's operator ServiceAccount with these (GKE / EKS)."
  value = {
    gcp = module.gcp.keda_service_account
    aws = module.aws.keda_role_arn
  }
}

output "gcp_worker_storage_secrets" {
  description = "Per tenant, the Secret with its GCS HMAC key; apply before the GCP workers."
  sensitive   = true
  value       = module.gcp.worker_storage_secrets
}
