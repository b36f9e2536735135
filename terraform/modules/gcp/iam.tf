# Per tenant: one service account for that tenant's worker pods (GKE Workload Identity binds
# it to the Kubernetes ServiceAccount audioguard-worker-<tenant>), granted only on that
# tenant's subscription, topics and bucket. No project-level role: a tenant's identity
# cannot name, let alone read, another tenant's resources. Every grant below is indexed by
# each.key; tests/unit/test_deploy_terraform.py checks that no grant crosses tenants.

resource "google_service_account" "worker" {
  for_each = var.tenants
  project  = var.project_id
  # 6..30 characters: a readable prefix of the tenant id plus a hash so long ids stay unique
  account_id   = "ag-${substr(each.key, 0, 19)}-${substr(md5(each.key), 0, 6)}"
  display_name = "audioguard worker for tenant ${each.key}"
}

resource "google_service_account_iam_member" "worker_workload_identity" {
  for_each           = var.tenants
  service_account_id = google_service_account.worker[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.k8s_namespace}/audioguard-worker-${each.key}]"
}

# pull and acknowledge arrivals
resource "google_pubsub_subscription_iam_member" "worker_arrivals" {
  for_each     = var.tenants
  project      = var.project_id
  subscription = google_pubsub_subscription.arrivals_workers[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# publish verdicts
resource "google_pubsub_topic_iam_member" "worker_verdicts" {
  for_each = var.tenants
  project  = var.project_id
  topic    = google_pubsub_topic.verdicts[each.key].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# publish poison messages straight to the dead-letter topic (never retried)
resource "google_pubsub_topic_iam_member" "worker_dlq" {
  for_each = var.tenants
  project  = var.project_id
  topic    = google_pubsub_topic.dlq[each.key].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# read the tenant's uploaded audio, nothing else
resource "google_storage_bucket_iam_member" "worker_audio" {
  for_each = var.tenants
  bucket   = google_storage_bucket.audio[each.key].name
  role     = "roles/storage.objectViewer"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# KEDA's operator reads subscription backlog (num_undelivered_messages) from Cloud
# Monitoring. Monitoring has no per-subscription grants; the role is read-only metrics.
resource "google_service_account" "keda" {
  project      = var.project_id
  account_id   = "${substr(var.name_prefix, 0, 20)}-keda"
  display_name = "KEDA operator (reads Pub/Sub backlog metrics)"
}

resource "google_project_iam_member" "keda_monitoring_viewer" {
  project = var.project_id
  role    = "roles/monitoring.viewer"
  member  = "serviceAccount:${google_service_account.keda.email}"
}

resource "google_service_account_iam_member" "keda_workload_identity" {
  service_account_id = google_service_account.keda.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.keda_service_account}]"
}
