# State: remote, locked, versioned and encrypted, one state per environment. The backend
# block is partial on purpose: its settings come from `terraform init -backend-config=FILE`,
# so the same root serves staging and production. Pick the backend of the cloud that holds
# the state (one of these two blocks; the other stays commented out).
#
# GCS (state locking is built in; enable versioning on the state bucket):
#   backend.hcl:  bucket = "acme-terraform-state"
#                 prefix = "audioguard/prod"
#
# S3 (Terraform >= 1.10 locks with an S3 lock file; enable versioning and SSE-KMS):
#   backend.hcl:  bucket       = "acme-terraform-state"
#                 key          = "audioguard/prod/terraform.tfstate"
#                 region       = "eu-west-1"
#                 encrypt      = true
#                 use_lockfile = true
#
# Without -backend-config, `terraform init -backend=false` still allows validate / plan-free
# checks (CI here parses and scans the code; nothing is applied).

terraform {
  backend "gcs" {}
  # backend "s3" {}
}
