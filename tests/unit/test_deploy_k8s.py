"""Offline checks of deploy/k8s/: render every template the way Terraform and envsubst do,
then validate each object against the Kubernetes 1.30 and 1.34 OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors) and KEDA's own CRD schemas (vendored), and check that
the pieces agree with each other and with the worker (settings, probes, names, drain).

What only a cluster proves (GPU scheduling, KEDA reading real lag, IRSA / Workload
Identity) is listed in docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumers.tenancy import kinesis_stream, pubsub_subscription
from services.cli import build_parser
from services.settings import Settings
from services.tools.supervisor import SHUTDOWN_MARGIN_SECONDS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).parent / "deploy_schemas"
#: the oldest and newest minor versions GKE and EKS offer in standard support
K8S_VERSIONS = ("1.30.0", "1.34.0")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

COMMON = {
    "NAMESPACE": "audioguard",
    "IMAGE": "registry.example/audioguard/worker@sha256:" + "0" * 64,
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9092",
    "KINESIS_LEASES": "false",
    "KINESIS_LEASE_TABLE": "",
    "GCP_PROJECT": "my-project",
    "AWS_REGION": "eu-west-1",
    "STORE_URL": "redis://10.0.0.3:6379/0",
    "MIN_REPLICAS": "1",
    "MAX_REPLICAS": "8",
    "LAG_TARGET": "400",
    "ITERATOR_AGE_TARGET_MS": "30000",
}


def render(text: str, values: dict[str, str]) -> str:
    """`${NAME}` substitution, what templatefile() and envsubst both do with these files."""
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    assert not missing, f"no value for {missing}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def group(transport: str, tenant: str | None) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Render namespace + worker + KEDA objects for one worker group."""
    name = f"audioguard-worker-{tenant}" if tenant else f"audioguard-worker-{transport}"
    identity = {
        "kafka": ("audioguard.io/identity", ""),
        "pubsub": ("iam.gke.io/gcp-service-account", f"ag-{tenant}@my-project.iam.gserviceaccount.com"),
        "kinesis": ("eks.amazonaws.com/role-arn", f"arn:aws:iam::123456789012:role/audioguard-{tenant}"),
    }[transport]
    bucket = {
        "kafka": "audio-shared",
        "pubsub": f"audioguard-audio-{tenant}",
        "kinesis": "audioguard-audio-1-eu",
    }
    location = {
        "kafka": "audio-shared",
        "pubsub": bucket["pubsub"],
        "kinesis": f"{bucket['kinesis']}/{tenant}",
    }
    # one Kinesis group shares its stream through the lease table, the other reads it alone
    leases = transport == "kinesis" and tenant == "globex"
    values = dict(
        COMMON,
        NAME=name,
        TENANT=tenant or "",
        TENANTS_JSON=f'["{tenant}"]' if tenant else "[]",
        TRANSPORT=transport,
        # Kinesis takes one reader per stream; the others run two processes per GPU here
        PROCESSES="1" if transport == "kinesis" else "2",
        IDENTITY_ANNOTATION=identity[0],
        IDENTITY=identity[1],
        S3_ENDPOINT_URL="https://storage.googleapis.com"
        if transport == "pubsub"
        else "https://s3.eu-west-1.amazonaws.com",
        S3_REGION="auto" if transport == "pubsub" else "eu-west-1",
        S3_LOCATIONS_JSON=json.dumps({tenant: [location[transport]]}) if tenant else "{}",
        HMAC_ACCESS_ID="GOOG1EXAMPLE",
        HMAC_SECRET="example-secret",
    )
    if transport == "kinesis":
        values.update(
            KINESIS_LEASES="true" if leases else "false",
            KINESIS_LEASE_TABLE=f"audioguard-kinesis-leases-{tenant}",
            MAX_REPLICAS="4" if leases else "1",
        )
    files = ["namespace.yaml", "worker.yaml", f"keda/{transport}.yaml"]
    if transport == "pubsub":
        files.append("storage-secret.yaml")
    docs: list[dict[str, Any]] = []
    for rel in files:
        docs.extend(d for d in yaml.safe_load_all(render((K8S / rel).read_text(), values)) if d)
    return values, docs


GROUPS = [
    ("kafka", None),
    ("pubsub", "acme"),
    ("pubsub", "globex"),
    ("kinesis", "acme"),
    ("kinesis", "globex"),
]


@pytest.fixture(scope="module", params=GROUPS, ids=lambda g: f"{g[0]}-{g[1] or 'all'}")
def rendered(request: pytest.FixtureRequest) -> tuple[dict[str, str], list[dict[str, Any]]]:
    transport, tenant = request.param
    return group(transport, tenant)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _crd_validator(file: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((SCHEMAS / file).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


KEDA = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}


def validate(doc: dict[str, Any]) -> list[str]:
    if doc["apiVersion"].startswith("keda.sh/"):
        return [f"{list(e.path)}: {e.message}" for e in _crd_validator(KEDA[doc["kind"]]).iter_errors(doc)]
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{version}: {exc}")
    return errors


def test_every_object_is_valid_against_its_schema(
    rendered: tuple[dict[str, str], list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    } <= kinds
    assert "ScaledObject" in kinds
    for doc in docs:
        errors = validate(doc)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def test_the_validators_reject_broken_objects() -> None:
    _, docs = group("pubsub", "acme")
    deployment = yaml.safe_load(yaml.safe_dump(_one(docs, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/x"
    assert validate(deployment), "strict schema must reject an unknown field"
    scaled = yaml.safe_load(yaml.safe_dump(_one(docs, "ScaledObject")))
    del scaled["spec"]["scaleTargetRef"]["name"]
    assert validate(scaled), "KEDA schema must require scaleTargetRef.name"
    scaled = yaml.safe_load(yaml.safe_dump(_one(docs, "ScaledObject")))
    scaled["spec"]["triggers"] = [{"metadata": {}}]
    assert validate(scaled), "KEDA schema must require a trigger type"


def test_the_worker_settings_parse_and_match_the_pod(
    rendered: tuple[dict[str, str], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    values, docs = rendered
    config = _one(docs, "ConfigMap")["data"]
    for key in list(os.environ):
        if key.startswith("AUDIOGUARD_"):
            monkeypatch.delenv(key)
    for key, value in config.items():
        assert key.startswith("AUDIOGUARD_")
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.transport == values["TRANSPORT"]
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == [
        "worker",
        "--transport",
        settings.transport,
        "--processes",
        values["PROCESSES"],
    ]
    args = build_parser().parse_args(container["args"])
    assert args.processes == int(values["PROCESSES"]) >= 1
    if settings.transport == "kinesis":
        assert args.processes == 1, "the worker refuses a second reader of a stream"
    assert container["envFrom"][0]["configMapRef"]["name"] == _one(docs, "ConfigMap")["metadata"]["name"]
    port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    assert port == settings.metrics_port
    annotations = _one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", settings.metrics_port)
    # the drain must finish before the kubelet's SIGKILL
    assert pod["terminationGracePeriodSeconds"] >= settings.drain_seconds + 15
    # ... and the supervisor's deadline over all its processes before the kubelet's SIGKILL
    supervisor_deadline = settings.drain_seconds + settings.close_seconds + SHUTDOWN_MARGIN_SECONDS
    assert pod["terminationGracePeriodSeconds"] > supervisor_deadline
    if values["TENANT"]:
        assert settings.tenants == [values["TENANT"]]
        # the worker itself refuses audio outside the tenant's own bucket / prefix
        assert list(settings.storage.tenant_s3_locations) == [values["TENANT"]]
    else:
        assert settings.tenants == [], "Kafka workers serve every tenant through the pattern"
    assert settings.storage.s3_endpoint_url and settings.storage.s3_endpoint_url.startswith("https://")
    volume = next(v["secret"] for v in pod["volumes"] if "secret" in v)
    assert volume["optional"] is True, "the Secret exists on GCP only"
    mount = next(m for m in container["volumeMounts"] if m["name"] != "tmp")
    credentials_file = next(
        e["value"] for e in container["env"] if e["name"] == "AWS_SHARED_CREDENTIALS_FILE"
    )
    assert credentials_file == f"{mount['mountPath']}/credentials" and mount["readOnly"]
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if values["TRANSPORT"] == "pubsub":
        (secret,) = secrets
        assert secret["metadata"]["name"] == volume["secretName"]
        ini = secret["stringData"]["credentials"]
        assert "aws_access_key_id = GOOG1EXAMPLE" in ini and "aws_secret_access_key = example-secret" in ini
    else:
        assert not secrets, "IRSA (or the Kafka SASL settings) supply credentials, not a static key"


def test_one_gpu_per_pod_shared_by_its_worker_processes(
    rendered: tuple[dict[str, str], list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env_names = {e["name"] for e in pod["containers"][0].get("env", [])}
    assert "CUDA_VISIBLE_DEVICES" not in env_names, "the device plugin picks the GPU"
    assert _one(docs, "ConfigMap")["data"]["AUDIOGUARD_DEVICE"] == "cuda"


def test_hardened_pod(rendered: tuple[dict[str, str], list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "replicas" not in _one(docs, "Deployment")["spec"], "KEDA owns the replica count"


def test_selectors_and_references_agree(rendered: tuple[dict[str, str], list[dict[str, Any]]]) -> None:
    values, docs = rendered
    deployment = _one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("PodDisruptionBudget",):
        assert _one(docs, kind)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one(docs, "Service")["spec"]["selector"].items() <= labels.items()
    sa = _one(docs, "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["annotations"][values["IDENTITY_ANNOTATION"]] == values["IDENTITY"]
    namespace = _one(docs, "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace", namespace) == namespace for d in docs)
    scaled = _one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    auths = {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}
    for trigger in scaled["spec"]["triggers"]:
        if "authenticationRef" in trigger:
            assert trigger["authenticationRef"]["name"] in auths
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    if values["TRANSPORT"] == "kinesis" and values["KINESIS_LEASES"] != "true":
        # without the lease table a second reader of a stream duplicates work
        assert scaled["spec"]["maxReplicaCount"] == 1


def test_keda_watches_what_the_workers_consume(rendered: tuple[dict[str, str], list[dict[str, Any]]]) -> None:
    values, docs = rendered
    (trigger,) = _one(docs, "ScaledObject")["spec"]["triggers"]
    meta = trigger["metadata"]
    tenant = values["TENANT"]
    if values["TRANSPORT"] == "kafka":
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == Settings().kafka.group_id == "audioguard-workers"
        assert meta["bootstrapServers"] == values["KAFKA_BOOTSTRAP_SERVERS"]
        assert "topic" not in meta, "no topic: lag summed over every topic the pattern matched"
    elif values["TRANSPORT"] == "pubsub":
        assert trigger["type"] == "gcp-pubsub"
        assert meta["subscriptionName"].endswith(f"/subscriptions/{pubsub_subscription(tenant)}")
        assert meta["mode"] == "SubscriptionSize"
    else:
        assert trigger["type"] == "aws-cloudwatch"
        assert meta["namespace"] == "AWS/Kinesis"
        assert meta["metricName"] == "GetRecords.IteratorAgeMilliseconds"
        assert (meta["dimensionName"], meta["dimensionValue"]) == (
            "StreamName",
            kinesis_stream("arrivals", tenant),
        )


def test_placeholders_are_the_documented_ones() -> None:
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", (K8S / "README.md").read_text(), re.MULTILINE))
    documented |= {"MAX_REPLICAS", "HMAC_SECRET"}  # share a row with MIN_REPLICAS / HMAC_ACCESS_ID
    used: set[str] = set()
    for path in K8S.rglob("*.yaml"):
        used |= set(PLACEHOLDER.findall(path.read_text()))
    assert used and used <= documented, f"undocumented: {used - documented}"
