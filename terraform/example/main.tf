# An example root: the same tenants on GCP (Pub/Sub, GCS, GKE GPU pool) and on AWS (Kinesis,
# S3, EKS GPU node group). A real deployment usually uses one of the two; delete the other
# module block. Adding a tenant is one entry in local.tenants.
#
#   terraform init -backend-config=backend.hcl   # see backend.tf
#   terraform apply -var-file=prod.tfvars
#   terraform output -json gcp_worker_manifests | jq -r '.acme' | kubectl apply -f -

locals {
  tenants = {
    acme = {}
    globex = {
      max_delivery_attempts = 10
      audio_retention_days  = 7
      max_workers           = 4
      arrivals_shards       = 2
    }
    initech = {
      min_workers = 0
    }
  }
}

provider "google" {
  project = var.gcp_project_id
  region  = var.gcp_region
}

provider "aws" {
  region = var.aws_region
}

module "gcp" {
  source = "../modules/gcp"

  project_id     = var.gcp_project_id
  region         = var.gcp_region
  name_prefix    = var.name_prefix
  gke_cluster_id = var.gke_cluster_id
  worker_image   = var.worker_image
  store_url      = var.gcp_store_url
  # the gcp module's fields of each tenant (others are the aws module's)
  tenants = {
    for t, cfg in local.tenants : t => {
      for k, v in cfg : k => v if contains(["max_delivery_attempts", "audio_retention_days", "min_workers", "max_workers"], k)
    }
  }
}

module "aws" {
  source = "../modules/aws"

  name_prefix           = var.name_prefix
  eks_cluster_name      = var.eks_cluster_name
  eks_oidc_provider_arn = var.eks_oidc_provider_arn
  eks_oidc_issuer       = var.eks_oidc_issuer
  subnet_ids            = var.subnet_ids
  worker_image          = var.worker_image
  store_url             = var.aws_store_url
  tenants = {
    for t, cfg in local.tenants : t => {
      for k, v in cfg : k => v if contains(["arrivals_shards", "audio_retention_days", "min_workers"], k)
    }
  }
}
