output "tenants" {
  description = "Per tenant: its Pub/Sub names, bucket and worker service account."
  value = {
    for t in keys(var.tenants) : t => {
      arrivals_topic        = google_pubsub_topic.arrivals[t].name
      arrivals_subscription = google_pubsub_subscription.arrivals_workers[t].name
      verdicts_topic        = google_pubsub_topic.verdicts[t].name
      dlq_topic             = google_pubsub_topic.dlq[t].name
      dlq_subscription      = google_pubsub_subscription.dlq_replay[t].name
      audio_bucket          = google_storage_bucket.audio[t].name
      service_account       = google_service_account.worker[t].email
    }
  }
}

output "keda_service_account" {
  description = "Annotate KEDA's operator ServiceAccount with iam.gke.io/gcp-service-account = this."
  value       = google_service_account.keda.email
}

output "worker_manifests" {
  description = "Per tenant, the Kubernetes YAML of its workers (namespace, worker, KEDA scaler)."
  value = {
    for t, v in local.worker_values : t => join("\n---\n", [
      templatefile("${local.k8s_dir}/namespace.yaml", v),
      templatefile("${local.k8s_dir}/worker.yaml", v),
      templatefile("${local.k8s_dir}/keda/pubsub.yaml", v),
    ])
  }
}

output "worker_storage_secrets" {
  description = "Per tenant, the Kubernetes Secret with its GCS HMAC key (deploy/k8s/storage-secret.yaml)."
  sensitive   = true
  value = {
    for t, v in local.worker_values : t => templatefile("${local.k8s_dir}/storage-secret.yaml", merge(v, {
      HMAC_ACCESS_ID = google_storage_hmac_key.worker[t].access_id
      HMAC_SECRET    = google_storage_hmac_key.worker[t].secret
    }))
  }
}
