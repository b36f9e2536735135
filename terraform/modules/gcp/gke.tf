# The GPU node pool the workers run on, in an existing cluster (the cluster itself, its
# network and its control-plane hardening belong to the platform team). One worker pod per
# GPU; the pool autoscales from min to max as KEDA adds pods that do not fit.

resource "google_service_account" "gpu_nodes" {
  project      = var.project_id
  account_id   = "${substr(var.name_prefix, 0, 20)}-gpu-nodes"
  display_name = "audioguard GPU nodes (logs, metrics, image pulls only)"
}

# the minimal roles a GKE node needs, instead of the Compute Engine default account
resource "google_project_iam_member" "gpu_nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.gpu_nodes.email}"
}

resource "google_container_node_pool" "gpu" {
  name    = "${var.name_prefix}-gpu"
  cluster = var.gke_cluster_id

  autoscaling {
    min_node_count  = var.gpu_node_pool.min_node_count
    max_node_count  = var.gpu_node_pool.max_node_count
    location_policy = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    # one node at a time: each worker drains before its node goes
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.gpu_node_pool.machine_type
    image_type      = "COS_CONTAINERD"
    spot            = var.gpu_node_pool.spot
    service_account = google_service_account.gpu_nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.gpu_node_pool.accelerator
      count = var.gpu_node_pool.gpus_per_node
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    # the worker Deployment's nodeSelector (deploy/k8s/worker.yaml)
    labels = {
      "audioguard.io/pool" = "gpu"
    }

    # only pods that tolerate it (the workers) land on the expensive nodes
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}
