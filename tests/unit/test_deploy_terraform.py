"""Offline checks of terraform/: parse every file with python-hcl2 and evaluate the per-tenant
resources for each tenant of the example root's map, the way `for_each = var.tenants` does.

Proven here: every example tenant gets its topics / streams, its subscription with retry and
dead-letter policies, its dead-letter destination, its bucket or prefix and its own
identity with grants; names agree with consumers/tenancy.py; no grant or policy statement
of one tenant's identity names another tenant's resource or a wildcard; the GPU pools carry
the label and taint the worker pods select; the Kubernetes templates get every variable
they use. checkov (tests/unit/test_deploy_checkov.py) scans the same code for security
misconfigurations. Only `terraform plan/apply` with credentials proves the providers accept it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from consumers.tenancy import kinesis_stream, pubsub_subscription, pubsub_topic, validate_tenant

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
K8S = ROOT / "deploy" / "k8s"


def _clean(value: Any) -> Any:
    """python-hcl2 keeps HCL quoting ('"name"') and adds bookkeeping keys: drop both."""
    if isinstance(value, dict):
        return {_unquote(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def load(folder: Path) -> dict[str, Any]:
    """All blocks of a module: {"resource": {type: {name: body}}, "data": ..., "variable": ..., ...}."""
    merged: dict[str, Any] = {
        "resource": {},
        "data": {},
        "variable": {},
        "locals": {},
        "module": {},
        "output": {},
    }
    for path in sorted(folder.glob("*.tf")):
        parsed = _clean(hcl2.load(path.open()))
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        merged[kind].setdefault(rtype, {})[name] = body
        for kind in ("variable", "module", "output"):
            for block in parsed.get(kind, []):
                merged[kind].update(block)
        for block in parsed.get("locals", []):
            merged["locals"].update(block)
    return merged


@pytest.fixture(scope="module")
def gcp() -> dict[str, Any]:
    return load(TF / "modules" / "gcp")


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return load(TF / "modules" / "aws")


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return load(TF / "example")


@pytest.fixture(scope="module")
def tenants(example: dict[str, Any]) -> list[str]:
    names = list(example["locals"]["tenants"])
    assert len(names) >= 3, "the example map should show several tenants"
    return [validate_tenant(t) for t in names]


REF = re.compile(r"([a-z0-9_]+)\.([a-z0-9_]+)\[each\.key\]")


def render(value: Any, tenant: str) -> Any:
    """Evaluate for one tenant: each.key -> the tenant, `type.name[each.key]` -> `type.name[tenant]`."""
    if isinstance(value, dict):
        return {k: render(v, tenant) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, tenant) for v in value]
    if isinstance(value, str):
        text = REF.sub(lambda m: f"{m.group(1)}.{m.group(2)}[{tenant}]", value)
        text = text.replace("${each.key}", tenant)
        return text
    return value


def per_tenant(module: dict[str, Any], kind: str = "resource") -> Iterator[tuple[str, str, dict[str, Any]]]:
    for rtype, named in module[kind].items():
        for name, body in named.items():
            if body.get("for_each") == "${var.tenants}":
                yield rtype, name, body


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def tenants_named(text: str, tenants: list[str]) -> set[str]:
    """The tenants a rendered string refers to, as a `[tenant]` index or a name segment."""
    found = set()
    for t in tenants:
        if re.search(rf"\[{re.escape(t)}\]|(?<![a-z0-9]){re.escape(t)}(?![a-z0-9])", text):
            found.add(t)
    return found


# ---------------------------------------------------------------- the example root


def test_the_example_passes_every_tenant_to_both_modules(example: dict[str, Any]) -> None:
    for name in ("gcp", "aws"):
        call = example["module"][name]
        assert call["source"] == f"../modules/{name}"
        assert "local.tenants" in str(call["tenants"]), f"module {name} must get the one tenants map"


def test_tenant_variable_validates_ids(gcp: dict[str, Any], aws: dict[str, Any]) -> None:
    for module in (gcp, aws):
        rules = module["variable"]["tenants"]["validation"]
        assert any("[a-z0-9-]{1,40}" in str(r["condition"]) for r in rules)


# ---------------------------------------------------------------- GCP


def test_gcp_every_tenant_gets_its_topics_subscription_and_dead_letters(
    gcp: dict[str, Any], tenants: list[str]
) -> None:
    res = gcp["resource"]
    for t in tenants:
        for kind in ("arrivals", "verdicts", "dlq"):
            topic = render(res["google_pubsub_topic"][kind], t)
            assert topic["name"] == pubsub_topic(kind, t)
            assert topic["kms_key_name"], "topics are encrypted with the module's key"
        sub = render(res["google_pubsub_subscription"]["arrivals_workers"], t)
        assert sub["name"] == pubsub_subscription(t)
        assert sub["topic"] == f"${{google_pubsub_topic.arrivals[{t}].id}}"
        (dead_letter,) = sub["dead_letter_policy"]
        assert dead_letter["dead_letter_topic"] == f"${{google_pubsub_topic.dlq[{t}].id}}"
        assert dead_letter["max_delivery_attempts"] == "${each.value.max_delivery_attempts}"
        (retry,) = sub["retry_policy"]
        assert int(retry["minimum_backoff"].rstrip("s")) < int(retry["maximum_backoff"].rstrip("s"))
        replay = render(res["google_pubsub_subscription"]["dlq_replay"], t)
        assert replay["name"] == pubsub_subscription(t, "dlq")
        assert replay["topic"] == f"${{google_pubsub_topic.dlq[{t}].id}}"
        bucket = render(res["google_storage_bucket"]["audio"], t)
        assert bucket["uniform_bucket_level_access"] is True
        assert bucket["public_access_prevention"] == "enforced"
        assert bucket["encryption"][0]["default_kms_key_name"]
        assert bucket["versioning"][0]["enabled"] is True
    # the Pub/Sub service agent must be allowed to dead-letter (publish to dlq, ack the source)
    assert (
        "google_pubsub_topic.dlq[each.key]"
        in res["google_pubsub_topic_iam_member"]["dlq_agent_publisher"]["topic"]
    )
    agent_sub = res["google_pubsub_subscription_iam_member"]["dlq_agent_subscriber"]["subscription"]
    assert "arrivals_workers[each.key]" in agent_sub


WORKER_SA = "google_service_account.worker"
GCP_WORKER_ROLES = {
    "roles/pubsub.subscriber",
    "roles/pubsub.publisher",
    "roles/storage.objectViewer",
    "roles/iam.workloadIdentityUser",
}


def gcp_worker_grants(gcp: dict[str, Any], tenant: str) -> list[tuple[str, str, dict[str, Any]]]:
    grants = []
    for rtype, name, body in per_tenant(gcp):
        if rtype.endswith("_iam_member") and (
            WORKER_SA in str(body.get("member")) or WORKER_SA in str(body.get("service_account_id"))
        ):
            grants.append((rtype, name, render(body, tenant)))
    return grants


def check_gcp_isolation(gcp: dict[str, Any], tenants: list[str]) -> None:
    # no project-wide role for a tenant identity: that would reach every tenant's resources
    for rtype in ("google_project_iam_member", "google_project_iam_binding", "google_project_iam_policy"):
        for name, body in gcp["resource"].get(rtype, {}).items():
            assert WORKER_SA not in str(body), f"{rtype}.{name} grants a tenant identity project-wide"
    for t in tenants:
        grants = gcp_worker_grants(gcp, t)
        granted_on = set()
        for rtype, name, body in grants:
            assert body["role"] in GCP_WORKER_ROLES, f"{rtype}.{name}: role {body['role']}"
            text = " ".join(_strings({k: v for k, v in body.items() if k != "for_each"}))
            assert "*" not in text, f"{rtype}.{name}: wildcard"
            assert tenants_named(text, tenants) == {t}, (
                f"{rtype}.{name} for {t} names {tenants_named(text, tenants)}"
            )
            granted_on.add(
                next(
                    v
                    for k, v in body.items()
                    if k in ("subscription", "topic", "bucket", "service_account_id")
                )
            )
        assert granted_on == {
            f"${{google_pubsub_subscription.arrivals_workers[{t}].name}}",
            f"${{google_pubsub_topic.verdicts[{t}].name}}",
            f"${{google_pubsub_topic.dlq[{t}].name}}",
            f"${{google_storage_bucket.audio[{t}].name}}",
            f"${{google_service_account.worker[{t}].name}}",
        }, f"{t} gets exactly its subscription, its two topics, its bucket and its workload identity"


def test_gcp_each_tenant_identity_reaches_only_its_own_resources(
    gcp: dict[str, Any], tenants: list[str]
) -> None:
    check_gcp_isolation(gcp, tenants)
    wi = render(gcp["resource"]["google_service_account_iam_member"]["worker_workload_identity"], "acme")
    assert wi["member"].endswith("/audioguard-worker-acme]"), (
        "bound to that tenant's Kubernetes ServiceAccount only"
    )


def test_gcp_isolation_check_catches_a_cross_tenant_grant(gcp: dict[str, Any], tenants: list[str]) -> None:
    broken = copy.deepcopy(gcp)
    broken["resource"]["google_pubsub_topic_iam_member"]["worker_verdicts"]["topic"] = (
        '${google_pubsub_topic.verdicts["globex"].name}'
    )
    with pytest.raises(AssertionError):
        check_gcp_isolation(broken, tenants)
    broken = copy.deepcopy(gcp)
    broken["resource"]["google_project_iam_member"]["leak"] = {
        "role": "roles/pubsub.subscriber",
        "member": "serviceAccount:${google_service_account.worker[each.key].email}",
    }
    with pytest.raises(AssertionError):
        check_gcp_isolation(broken, tenants)


# ---------------------------------------------------------------- AWS


def test_aws_every_tenant_gets_its_streams_and_dead_letter_stream(
    aws: dict[str, Any], tenants: list[str]
) -> None:
    streams = aws["resource"]["aws_kinesis_stream"]
    for t in tenants:
        for kind in ("arrivals", "verdicts", "dlq"):
            stream = render(streams[kind], t)
            assert stream["name"] == kinesis_stream(kind, t)
            assert stream["encryption_type"] == "KMS" and stream["kms_key_id"]
    bucket_sse = aws["resource"]["aws_s3_bucket_server_side_encryption_configuration"]["audio"]
    assert bucket_sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
    assert (
        aws["resource"]["aws_s3_bucket_versioning"]["audio"]["versioning_configuration"][0]["status"]
        == "Enabled"
    )
    block = aws["resource"]["aws_s3_bucket_public_access_block"]["audio"]
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )


def check_aws_isolation(aws: dict[str, Any], tenants: list[str]) -> None:
    assert aws["resource"]["aws_iam_role_policy"]["worker"]["policy"] == (
        "${data.aws_iam_policy_document.worker[each.key].json}"
    )
    doc = aws["data"]["aws_iam_policy_document"]["worker"]
    assert doc["for_each"] == "${var.tenants}"
    for t in tenants:
        statements = render(doc, t)["statement"]
        actions = {a for s in statements for a in s["actions"]}
        assert {"kinesis:GetRecords", "kinesis:PutRecords", "s3:GetObject"} <= actions
        for s in statements:
            assert s.get("effect", "Allow") == "Allow"
            assert not any(a.endswith("*") for a in s["actions"]), f"{s['sid']}: wildcard action"
            for resource in s["resources"]:
                assert resource != "*", f"{s['sid']}: resource *"
                named = tenants_named(resource, tenants)
                if named:
                    assert named == {t}, f"{s['sid']} for {t} reaches {named}"
                    if resource.startswith("${aws_s3_bucket.audio.arn}"):
                        assert resource == f"${{aws_s3_bucket.audio.arn}}/{t}/*"
                else:
                    # a shared resource (the bucket, the key) only under a condition that pins the tenant
                    assert s.get("condition"), f"{s['sid']}: shared resource {resource} without a condition"
            for cond in s.get("condition", []):
                values = " ".join(cond["values"])
                named = tenants_named(values, tenants)
                assert named in (set(), {t}), f"{s['sid']} condition for {t} names {named}"
                assert "*" not in values.replace(f"{t}/*", ""), f"{s['sid']}: wildcard condition"
        trust = render(aws["data"]["aws_iam_policy_document"]["worker_trust"], t)["statement"][0]
        subs = [c for c in trust["condition"] if c["variable"].endswith(":sub")]
        assert subs and subs[0]["values"] == [
            f"system:serviceaccount:${{var.k8s_namespace}}:audioguard-worker-{t}"
        ]


def test_aws_each_tenant_role_reaches_only_its_own_streams_and_prefix(
    aws: dict[str, Any], tenants: list[str]
) -> None:
    check_aws_isolation(aws, tenants)


def test_aws_isolation_check_catches_a_cross_tenant_statement(
    aws: dict[str, Any], tenants: list[str]
) -> None:
    for mutate in (
        lambda s: s[2]["resources"].__setitem__(0, "${aws_s3_bucket.audio.arn}/*"),
        lambda s: s[0]["resources"].append('${aws_kinesis_stream.arrivals["globex"].arn}'),
        lambda s: s[3].pop("condition"),
        lambda s: s[0]["actions"].append("kinesis:*"),
    ):
        broken = copy.deepcopy(aws)
        mutate(broken["data"]["aws_iam_policy_document"]["worker"]["statement"])
        with pytest.raises(AssertionError):
            check_aws_isolation(broken, tenants)


# ---------------------------------------------------------------- GPU pools and Kubernetes


def test_gpu_pools_autoscale_and_match_the_worker_pods(gcp: dict[str, Any], aws: dict[str, Any]) -> None:
    pool = gcp["resource"]["google_container_node_pool"]["gpu"]
    assert pool["autoscaling"][0]["max_node_count"] == "${var.gpu_node_pool.max_node_count}"
    node = pool["node_config"][0]
    assert node["guest_accelerator"][0]["count"] == "${var.gpu_node_pool.gpus_per_node}"
    assert node["workload_metadata_config"][0]["mode"] == "GKE_METADATA"
    group = aws["resource"]["aws_eks_node_group"]["gpu"]
    assert "NVIDIA" in group["ami_type"]
    assert group["scaling_config"][0]["max_size"] == "${var.gpu_node_group.max_size}"
    worker = (K8S / "worker.yaml").read_text()
    for labels, taints in ((node["labels"], node["taint"]), (group["labels"], group["taint"])):
        ((key, value),) = labels.items()
        assert f"{key}: {value}" in worker, "the Deployment's nodeSelector"
        assert taints[0]["key"] == "nvidia.com/gpu" and "key: nvidia.com/gpu" in worker


@pytest.mark.parametrize("cloud,keda", [("gcp", "pubsub"), ("aws", "kinesis")])
def test_k8s_templates_get_every_variable_they_use(cloud: str, keda: str) -> None:
    module = load(TF / "modules" / cloud)
    assert module["locals"]["worker_values"]
    k8s_tf = (TF / "modules" / cloud / "k8s.tf").read_text()
    provided = set(re.findall(r"^\s*([A-Z0-9_]+)\s*=", k8s_tf, re.MULTILINE))
    outputs = str(module["output"])
    templates = ["namespace.yaml", "worker.yaml", f"keda/{keda}.yaml"]
    if cloud == "gcp":
        templates.append("storage-secret.yaml")
        provided |= set(
            re.findall(
                r"([A-Z0-9_]+)\s*=\s*google_storage_hmac_key",
                (TF / "modules" / cloud / "outputs.tf").read_text(),
            )
        )
    for rel in templates:
        used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", (K8S / rel).read_text()))
        assert f"${{local.k8s_dir}}/{rel}" in outputs, f"{rel} is not rendered by the {cloud} module"
        assert used <= provided, f"templatefile() would fail on {rel}: {used - provided} not provided"
    assert re.search(rf'TRANSPORT\s*=\s*"{keda}"', k8s_tf)
    # the worker's own confinement names exactly the tenant's bucket (GCS) or prefix (S3)
    expected = (
        "google_storage_bucket.audio[t].name" if cloud == "gcp" else "${aws_s3_bucket.audio.bucket}/${t}"
    )
    assert expected in k8s_tf.split("S3_LOCATIONS_JSON")[1].splitlines()[0]


def test_state_backend_is_configured_and_documented() -> None:
    backend = (TF / "example" / "backend.tf").read_text()
    assert 'backend "gcs"' in backend and "s3" in backend and "use_lockfile" in backend
    assert "State" in (ROOT / "docs" / "deploy.md").read_text()


def test_aws_every_tenant_gets_a_lease_table_its_worker_may_use_but_not_create_or_delete(
    aws: dict[str, Any], tenants: list[str]
) -> None:
    table = aws["resource"]["aws_dynamodb_table"]["leases"]
    assert table["for_each"] == "${var.tenants}"
    for t in tenants:
        rendered = render(table, t)
        assert rendered["name"] == f"audioguard-kinesis-leases-{t}"
        assert rendered["billing_mode"] == "PAY_PER_REQUEST" and rendered["hash_key"] == "lease_key"
        assert rendered["server_side_encryption"][0]["kms_key_arn"] == "${aws_kms_key.data.arn}"
        statements = render(aws["data"]["aws_iam_policy_document"]["worker"], t)["statement"]
        (leases,) = [s for s in statements if s["sid"] == "OwnShardLeases"]
        assert leases["resources"] == [f"${{aws_dynamodb_table.leases[{t}].arn}}"]
        assert {"dynamodb:Scan", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= set(leases["actions"])
        granted = {a for s in statements for a in s["actions"]}
        assert not granted & {"dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:DeleteItem"}
