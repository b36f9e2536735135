# The Kubernetes objects of each tenant's workers, rendered from deploy/k8s/ with the
# identities created above. The worker reads audio as s3:// URIs (services/storage.py has no
# gs:// client), so on GCP it reads the tenant's bucket through the GCS XML API with an HMAC
# key of the tenant's own service account: same identity, same objectViewer grant. Output only (no kubernetes provider here): apply them with the
# example root's kubectl step, or any GitOps tool, once KEDA is installed.

locals {
  k8s_dir = "${path.module}/../../../deploy/k8s"

  worker_values = {
    for t, cfg in var.tenants : t => {
      NAMESPACE               = var.k8s_namespace
      NAME                    = "audioguard-worker-${t}"
      TENANT                  = t
      TENANTS_JSON            = jsonencode([t])
      TRANSPORT               = "pubsub"
      IMAGE                   = var.worker_image
      PROCESSES               = tostring(var.worker_processes)
      IDENTITY_ANNOTATION     = "iam.gke.io/gcp-service-account"
      IDENTITY                = google_service_account.worker[t].email
      KAFKA_BOOTSTRAP_SERVERS = ""
      KINESIS_LEASES          = "false"
      KINESIS_LEASE_TABLE     = ""
      GCP_PROJECT             = var.project_id
      AWS_REGION              = ""
      STORE_URL               = var.store_url
      S3_ENDPOINT_URL         = "https://storage.googleapis.com"
      S3_REGION               = "auto"
      S3_LOCATIONS_JSON       = jsonencode({ (t) = [google_storage_bucket.audio[t].name] })
      MIN_REPLICAS            = tostring(cfg.min_workers)
      MAX_REPLICAS            = tostring(cfg.max_workers)
      LAG_TARGET              = "400"
      ITERATOR_AGE_TARGET_MS  = "30000"
    }
  }
}

# The HMAC key of each tenant's service account (its secret lives in the Terraform state,
# which must therefore be an encrypted, access-controlled backend: see backend.tf).
resource "google_storage_hmac_key" "worker" {
  for_each              = var.tenants
  project               = var.project_id
  service_account_email = google_service_account.worker[each.key].email
}
