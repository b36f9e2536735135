# The GPU node group the workers run on, in an existing cluster (the cluster, its VPC and
# its control-plane hardening belong to the platform team). One worker pod per GPU; the
# cluster autoscaler (or Karpenter) moves the size between min and max as KEDA adds pods.

data "aws_iam_policy_document" "nodes_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "gpu_nodes" {
  name               = "${var.name_prefix}-gpu-nodes"
  assume_role_policy = data.aws_iam_policy_document.nodes_trust.json
  tags               = { app = "audioguard" }
}

# the three AWS-managed policies an EKS worker node needs, nothing more: the workers' own
# permissions come from their IRSA roles, never from the node
resource "aws_iam_role_policy_attachment" "gpu_nodes" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])
  role       = aws_iam_role.gpu_nodes.name
  policy_arn = "arn:${data.aws_partition.this.partition}:iam::aws:policy/${each.value}"
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = var.eks_cluster_name
  node_group_name = "${var.name_prefix}-gpu"
  node_role_arn   = aws_iam_role.gpu_nodes.arn
  subnet_ids      = var.subnet_ids
  # Amazon Linux 2023 with the NVIDIA driver and container toolkit preinstalled
  ami_type       = "AL2023_x86_64_NVIDIA"
  capacity_type  = var.gpu_node_group.capacity_type
  instance_types = var.gpu_node_group.instance_types
  disk_size      = var.gpu_node_group.disk_size_gb

  scaling_config {
    min_size     = var.gpu_node_group.min_size
    max_size     = var.gpu_node_group.max_size
    desired_size = var.gpu_node_group.desired_size
  }

  update_config {
    # one node at a time: each worker drains before its node goes
    max_unavailable = 1
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

  tags = { app = "audioguard" }

  lifecycle {
    # the autoscaler owns the current size
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.gpu_nodes]
}
