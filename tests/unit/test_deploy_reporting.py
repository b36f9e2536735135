"""deploy/k8s/reporting.yaml: a valid Deployment whose arguments the CLI accepts."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser

FILE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "reporting.yaml"
VALUES = {"NAMESPACE": "audioguard", "IMAGE": "registry.example/audioguard@sha256:" + "0" * 64,
          "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9092"}  # fmt: skip


def _docs() -> list[dict]:  # type: ignore[type-arg]
    text = re.sub(r"\$\{([A-Z_]+)\}", lambda m: VALUES[m.group(1)], FILE.read_text())
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("version", ["1.30.0", "1.34.0"])
def test_reporting_deployment_is_valid(version: str) -> None:
    for doc in _docs():
        kubernetes_validate.validate(doc, version, strict=True)


def test_reporting_deployment_runs_a_real_command() -> None:
    (container,) = _docs()[0]["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.report_command, args.metrics_port) == ("report", "run", 9100)
