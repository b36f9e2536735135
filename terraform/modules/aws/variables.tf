variable "name_prefix" {
  description = "Prefix of globally unique names (the audio bucket); lowercase, ends without a hyphen."
  type        = string
  default     = "audioguard"
}

variable "tenants" {
  description = <<-EOT
    Every tenant, keyed by tenant id ([a-z0-9-]{1,40}, the same ids the workers use).
    Adding a tenant is one entry; each field has a default.
  EOT
  type = map(object({
    # shards of the tenant's arrivals stream (1 MB/s or 1000 records/s of writes each)
    arrivals_shards = optional(number, 1)
    # hours a record stays readable in the arrivals / verdicts / dlq streams
    retention_hours     = optional(number, 24)
    dlq_retention_hours = optional(number, 168)
    # days an audio object is kept under s3://<bucket>/<tenant>/
    audio_retention_days = optional(number, 30)
    # 0: KEDA stops the tenant's worker (and its GPU) while the stream is idle; 1: always warm.
    min_workers = optional(number, 1)
    # share the stream's shards through the lease table (docs/scaling.md); off: one reader
    # per stream, so max_workers must stay 1
    kinesis_leases = optional(bool, false)
    # KEDA's upper bound; more than 1 needs kinesis_leases, and more than the shards is idle
    max_workers = optional(number, 1)
  }))

  validation {
    condition     = alltrue([for t in keys(var.tenants) : can(regex("^[a-z0-9-]{1,40}$", t))])
    error_message = "Tenant ids are lowercase [a-z0-9-]{1,40}."
  }
  validation {
    condition     = alltrue([for t in values(var.tenants) : t.min_workers == 0 || t.min_workers == 1])
    error_message = "min_workers is 0 (scale to zero) or 1."
  }
  validation {
    condition = alltrue([
      for t in values(var.tenants) :
      t.max_workers >= 1 && t.max_workers >= t.min_workers && (t.max_workers == 1 || t.kinesis_leases)
    ])
    error_message = "max_workers is at least 1 and min_workers; more than one worker per stream needs kinesis_leases = true."
  }
  validation {
    condition     = alltrue([for t in values(var.tenants) : t.max_workers <= t.arrivals_shards])
    error_message = "max_workers above arrivals_shards: a worker without a shard lease reads nothing."
  }
}

variable "eks_cluster_name" {
  description = "Existing EKS cluster the GPU node group joins."
  type        = string
}

variable "eks_oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (IRSA)."
  type        = string
}

variable "eks_oidc_issuer" {
  description = "The cluster's OIDC issuer without https:// (oidc.eks.REGION.amazonaws.com/id/XXXX)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the GPU node group."
  type        = list(string)
}

variable "gpu_node_group" {
  description = "The GPU node group: one worker pod per GPU, so node count x GPUs per node = worker capacity."
  type = object({
    instance_types = optional(list(string), ["g6.xlarge"])
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = optional(number, 0)
    max_size       = optional(number, 8)
    desired_size   = optional(number, 1)
    disk_size_gb   = optional(number, 100)
  })
  default = {}
}

variable "k8s_namespace" {
  description = "Namespace of the worker pods (deploy/k8s/namespace.yaml)."
  type        = string
  default     = "audioguard"
}

variable "keda_service_account" {
  description = "namespace:name of KEDA's operator ServiceAccount, which reads Kinesis iterator age from CloudWatch."
  type        = string
  default     = "keda:keda-operator"
}

variable "worker_image" {
  description = "Worker image reference, ideally by digest; used to render the Kubernetes manifests."
  type        = string
}

variable "store_url" {
  description = "Verdict / idempotency store URL for the workers (e.g. redis://ELASTICACHE:6379/0)."
  type        = string
}
