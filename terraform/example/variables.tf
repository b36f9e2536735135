variable "name_prefix" {
  description = "Prefix of globally unique names."
  type        = string
  default     = "audioguard"
}

variable "worker_image" {
  description = "Worker image, by digest (e.g. REGISTRY/audioguard/worker@sha256:...)."
  type        = string
}

variable "gcp_project_id" {
  type        = string
  description = "GCP project."
}

variable "gcp_region" {
  type        = string
  description = "GCP region."
  default     = "europe-west4"
}

variable "gke_cluster_id" {
  type        = string
  description = "projects/P/locations/L/clusters/C, with Workload Identity enabled."
}

variable "gcp_store_url" {
  type        = string
  description = "Memorystore Redis URL for the GCP workers."
}

variable "aws_region" {
  type        = string
  description = "AWS region."
  default     = "eu-west-1"
}

variable "eks_cluster_name" {
  type        = string
  description = "Existing EKS cluster."
}

variable "eks_oidc_provider_arn" {
  type        = string
  description = "The cluster's IAM OIDC provider ARN (IRSA)."
}

variable "eks_oidc_issuer" {
  type        = string
  description = "The cluster's OIDC issuer without https://."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the GPU node group."
}

variable "aws_store_url" {
  type        = string
  description = "ElastiCache Redis URL for the AWS workers."
}
