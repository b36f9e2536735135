variable "project_id" {
  description = "GCP project that holds the topics, buckets, service accounts and the GKE cluster."
  type        = string
}

variable "region" {
  description = "Region of the buckets, the KMS key ring and the GKE cluster."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of globally unique names (buckets, key ring); lowercase, ends without a hyphen."
  type        = string
  default     = "audioguard"
}

variable "tenants" {
  description = <<-EOT
    Every tenant, keyed by tenant id ([a-z0-9-]{1,40}, the same ids the workers use).
    Adding a tenant is one entry; each field has a default.
  EOT
  type = map(object({
    # deliveries of one arrival before Pub/Sub moves it to dlq-<tenant> (5..100)
    max_delivery_attempts = optional(number, 5)
    # days an audio object is kept in the tenant's bucket
    audio_retention_days = optional(number, 30)
    # KEDA bounds for this tenant's worker Deployment
    min_workers = optional(number, 1)
    max_workers = optional(number, 8)
  }))

  validation {
    condition     = alltrue([for t in keys(var.tenants) : can(regex("^[a-z0-9-]{1,40}$", t))])
    error_message = "Tenant ids are lowercase [a-z0-9-]{1,40}."
  }
  validation {
    condition     = alltrue([for t in values(var.tenants) : t.max_delivery_attempts >= 5 && t.max_delivery_attempts <= 100])
    error_message = "Pub/Sub accepts max_delivery_attempts between 5 and 100."
  }
}

variable "gke_cluster_id" {
  description = "Existing GKE cluster (projects/P/locations/L/clusters/C) the GPU node pool joins; Workload Identity enabled."
  type        = string
}

variable "gpu_node_pool" {
  description = "The GPU node pool: one worker pod per GPU, so node count x GPUs per node = worker capacity."
  type = object({
    machine_type   = optional(string, "g2-standard-8")
    accelerator    = optional(string, "nvidia-l4")
    gpus_per_node  = optional(number, 1)
    min_node_count = optional(number, 0)
    max_node_count = optional(number, 8)
    spot           = optional(bool, false)
  })
  default = {}
}

variable "k8s_namespace" {
  description = "Namespace of the worker pods (deploy/k8s/namespace.yaml)."
  type        = string
  default     = "audioguard"
}

variable "keda_service_account" {
  description = "namespace/name of KEDA's operator ServiceAccount, which reads Pub/Sub backlog from Cloud Monitoring."
  type        = string
  default     = "keda/keda-operator"
}

variable "worker_image" {
  description = "Worker image reference, ideally by digest; used to render the Kubernetes manifests."
  type        = string
}

variable "worker_processes" {
  description = "Worker processes per pod (audioguard worker --processes), all on the pod's one GPU; see docs/deploy.md."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_processes >= 1 && floor(var.worker_processes) == var.worker_processes
    error_message = "worker_processes must be a whole number >= 1."
  }
}

variable "store_url" {
  description = "Verdict / idempotency store URL for the workers (e.g. redis://MEMORYSTORE_IP:6379/0)."
  type        = string
}
