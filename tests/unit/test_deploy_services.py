"""deploy/k8s/reporting.yaml and api.yaml: valid manifests whose arguments the CLI accepts and
whose settings parse, with probes on paths the service answers."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser
from services.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VALUES = {"NAMESPACE": "audioguard", "IMAGE": "registry.example/audioguard@sha256:" + "0" * 64,
          "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9092", "STORE_URL": "redis://10.0.0.3:6379/0",
          "RATE_LIMIT_URL": "redis://10.0.0.3:6379/1", "API_UPLOAD_URI": "s3://audio-bucket/{tenant}/api/",
          "S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com", "S3_REGION": "eu-west-1"}  # fmt: skip


def _docs(name: str) -> list[dict[str, Any]]:
    text = re.sub(r"\$\{([A-Z_]+)\}", lambda m: VALUES[m.group(1)], (K8S / name).read_text())
    return [d for d in yaml.safe_load_all(text) if d]


def _container(name: str) -> dict[str, Any]:
    deployment = next(d for d in _docs(name) if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("AUDIOGUARD_"):
            monkeypatch.delenv(key)
    for item in container["env"]:
        value = item.get("value", "postgresql://u:p@db:5432/audioguard")  # the Secret's, stand-in
        monkeypatch.setenv(item["name"], value)
    return Settings()


@pytest.mark.parametrize("name", ["reporting.yaml", "api.yaml"])
@pytest.mark.parametrize("version", ["1.30.0", "1.34.0"])
def test_the_manifests_are_valid(name: str, version: str) -> None:
    for doc in _docs(name):
        kubernetes_validate.validate(doc, version, strict=True)


def test_reporting_deployment_runs_a_real_command() -> None:
    args = build_parser().parse_args(_container("reporting.yaml")["args"])
    assert (args.command, args.report_command, args.metrics_port) == ("report", "run", 9100)


def test_the_api_serves_on_the_probed_port_with_shared_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    container = _container("api.yaml")
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.host, args.port) == ("api", "0.0.0.0", 8080)
    assert container["ports"][0]["containerPort"] == args.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    settings = _settings(container, monkeypatch)
    assert settings.transport == "kafka" and settings.database.url is not None
    assert settings.api.rate_limit_url.startswith("redis://"), "replicas must share one rate limit"
    assert settings.api.upload_uri is not None and "{tenant}" in settings.api.upload_uri
    service = next(d for d in _docs("api.yaml") if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
