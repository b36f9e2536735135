# The Kubernetes objects of each tenant's workers, rendered from deploy/k8s/ with the
# identities created above. Output only (no kubernetes provider here): apply them with the
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
      IDENTITY_ANNOTATION     = "iam.gke.io/gcp-service-account"
      IDENTITY                = google_service_account.worker[t].email
      KAFKA_BOOTSTRAP_SERVERS = ""
      GCP_PROJECT             = var.project_id
      AWS_REGION              = ""
      STORE_URL               = var.store_url
      MIN_REPLICAS            = tostring(cfg.min_workers)
      MAX_REPLICAS            = tostring(cfg.max_workers)
      LAG_TARGET              = "400"
      ITERATOR_AGE_TARGET_MS  = "30000"
    }
  }
}
