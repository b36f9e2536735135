# Per tenant: a bucket for the tenant's audio (uniform bucket-level access, public access
# prevented, CMEK, versioning, access logs, retention by lifecycle), and one bucket for the
# access logs of all of them.

resource "google_storage_bucket" "audio" {
  for_each                    = var.tenants
  project                     = var.project_id
  name                        = "${var.name_prefix}-audio-${each.key}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = { tenant = each.key, app = "audioguard" }

  encryption {
    default_kms_key_name = google_kms_crypto_key.data.id
  }

  versioning {
    enabled = true
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "audio-${each.key}/"
  }

  lifecycle_rule {
    condition {
      age = each.value.audio_retention_days
    }
    action {
      type = "Delete"
    }
  }

  # versioning keeps overwritten audio; drop old versions after a week
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.storage_agent]
}

resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62: this is the access-log bucket itself; logging it into itself would loop.
  project                     = var.project_id
  name                        = "${var.name_prefix}-access-logs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = { app = "audioguard" }

  encryption {
    default_kms_key_name = google_kms_crypto_key.data.id
  }

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.storage_agent]
}
