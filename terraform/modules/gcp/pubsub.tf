# Per tenant: arrivals-<t> (+ subscription arrivals-<t>-workers with retry and dead-letter
# policies), verdicts-<t>, dlq-<t> (+ subscription dlq-<t>-replay for `audioguard dlq replay`).
# Names are consumers/tenancy.py's; tests/unit/test_deploy_terraform.py checks they agree.

resource "google_pubsub_topic" "arrivals" {
  for_each     = var.tenants
  project      = var.project_id
  name         = "arrivals-${each.key}"
  kms_key_name = google_kms_crypto_key.data.id
  labels       = { tenant = each.key, app = "audioguard" }

  depends_on = [google_kms_crypto_key_iam_member.pubsub_agent]
}

resource "google_pubsub_topic" "verdicts" {
  for_each     = var.tenants
  project      = var.project_id
  name         = "verdicts-${each.key}"
  kms_key_name = google_kms_crypto_key.data.id
  labels       = { tenant = each.key, app = "audioguard" }

  depends_on = [google_kms_crypto_key_iam_member.pubsub_agent]
}

resource "google_pubsub_topic" "dlq" {
  for_each     = var.tenants
  project      = var.project_id
  name         = "dlq-${each.key}"
  kms_key_name = google_kms_crypto_key.data.id
  labels       = { tenant = each.key, app = "audioguard" }
  # dead letters wait for a human: keep them for the topic's maximum
  message_retention_duration = "2678400s"

  depends_on = [google_kms_crypto_key_iam_member.pubsub_agent]
}

resource "google_pubsub_subscription" "arrivals_workers" {
  for_each = var.tenants
  project  = var.project_id
  name     = "arrivals-${each.key}-workers"
  topic    = google_pubsub_topic.arrivals[each.key].id
  labels   = { tenant = each.key, app = "audioguard" }

  # the worker extends the lease while a batch is scored; this is the floor
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dlq[each.key].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  # a subscription with no traffic must not expire: the workers may be scaled to zero
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dlq_replay" {
  for_each = var.tenants
  project  = var.project_id
  name     = "dlq-${each.key}-replay"
  topic    = google_pubsub_topic.dlq[each.key].id
  labels   = { tenant = each.key, app = "audioguard" }

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the tenant's DLQ
# topic and acknowledge on the tenant's subscription (Google's documented requirement).
resource "google_pubsub_topic_iam_member" "dlq_agent_publisher" {
  for_each = var.tenants
  project  = var.project_id
  topic    = google_pubsub_topic.dlq[each.key].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dlq_agent_subscriber" {
  for_each     = var.tenants
  project      = var.project_id
  subscription = google_pubsub_subscription.arrivals_workers[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
