"""The model registry on a real MLflow tracking server: its SQL store in the local PostgreSQL
(a database of the test's own), its artifacts in S3 on moto_server. The same contract as the
file registry: versions with sha256 / training manifest hash / eval results, aliases, the audit
trail, promote and rollback, a verified fetch, and a worker's `models:/<name>@champion`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from services.cli import main
from services.detector import default_artifact_dir
from services.errors import FatalError
from services.local.emulators import MlflowServer, MotoServer
from services.registry import AliasWatcher, ModelRef, open_registry, promote, rollback
from services.settings import Settings
from services.tools.worker import load_model

NAME = "audioguard-lfb-cnn"
BUCKET = "audioguard-models"


@pytest.fixture
def mlflow_server(postgres_url: str, tmp_path: Path) -> Iterator[tuple[MlflowServer, MotoServer]]:
    moto = MotoServer(log_path=tmp_path / "moto.log").start()
    try:
        s3 = boto3.client(
            "s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        server = MlflowServer(
            postgres_url, f"s3://{BUCKET}/mlflow", s3_endpoint_url=moto.endpoint_url,
            log_path=tmp_path / "mlflow.log",
        )  # fmt: skip
        with server.start(timeout=240):
            yield server, moto
    finally:
        moto.stop()


def test_the_registry_contract_on_mlflow_postgresql_and_s3(
    mlflow_server: tuple[MlflowServer, MotoServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, moto = mlflow_server
    registry = open_registry(server.tracking_uri, cache_dir=tmp_path / "cache")
    where = ["model", "--registry", server.tracking_uri]
    artifact = str(default_artifact_dir())
    assert (
        main([*where, "register", artifact, "--name", NAME, "--alias", "champion", "--reason", "first"]) == 0
    )
    second = registry.register(
        NAME, default_artifact_dir(), eval_results={"eer": 0.1}, description="retrained"
    )
    registry.set_alias(NAME, "challenger", second.version, reason="candidate")

    manifest = json.loads((default_artifact_dir() / "manifest.json").read_text())
    first = registry.get(NAME, 1)
    assert (first.sha256, first.train_manifest_sha256) == (
        manifest["checksum"],
        manifest["train_manifest_sha256"],
    )
    assert first.eval_results["eer"] == manifest["dev_metrics"]["eer"] and second.eval_results == {"eer": 0.1}
    assert registry.aliases(NAME) == {"champion": 1, "challenger": 2}
    assert [v.version for v in registry.versions(NAME)] == [1, 2]

    # the artifacts are in the S3 bucket, not on the server's disk
    s3 = boto3.client(
        "s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert sum(k.endswith("/artifact/weights.pt") for k in keys) == 2
    assert sum(k.endswith("/artifact/manifest.json") for k in keys) == 2

    # a worker configured with models:/<name>@champion loads version 1, verified
    settings = Settings(
        model_path=f"models:/{NAME}@champion", device="cpu", torch_threads=1,
        registry={"uri": server.tracking_uri, "cache_dir": str(tmp_path / "worker-cache")},
    )  # fmt: skip
    detector = load_model(settings, scorer="null")
    assert detector.meta.version == f"{manifest['version']}+r1"

    installed: list[int] = []
    watcher = AliasWatcher(
        registry, ModelRef(NAME, alias="champion"), serving=1,
        load=lambda directory, version: directory, install=lambda d, v: installed.append(v.version) is None,
    )  # fmt: skip
    assert watcher.check() is False
    registry.record_eval(NAME, 2, "gate", {"passed": True})
    assert registry.get(NAME, 2).eval_results["gate"] == {"passed": True}
    promote(registry, NAME, reason="gate passed")
    assert watcher.check() is True and installed == [2]
    assert registry.aliases(NAME) == {"champion": 2}
    rollback(registry, NAME, reason="p99 regression")
    assert registry.aliases(NAME) == {"champion": 1}
    assert [(e.alias, e.action, e.previous, e.version) for e in registry.history(NAME)] == [
        ("champion", "alias", None, 1),
        ("challenger", "alias", None, 2),
        ("champion", "promote", 1, 2),
        ("challenger", "delete", 2, None),
        ("champion", "rollback", 2, 1),
    ]

    # a tampered cached copy is fetched again, and a tampered object in S3 is refused
    fetched = registry.fetch(NAME, 1)
    with (fetched / "weights.pt").open("ab") as handle:
        handle.write(b"x")
    assert registry.fetch(NAME, 1) == fetched
    weights_key = next(
        k for k in keys if k.endswith("/artifact/weights.pt") and f"/{first.source.split('/')[2]}/" in k
    )
    s3.put_object(Bucket=BUCKET, Key=weights_key, Body=b"not the weights")
    with pytest.raises(FatalError) as caught:
        registry.fetch(NAME, 1, into=tmp_path / "fresh")
    assert caught.value.reason == "model_checksum"

    capsys.readouterr()
    assert main([*where, "list", NAME, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(v["version"], v["aliases"]) for v in listed] == [(1, ["champion"]), (2, [])]
    assert main([*where, "show", "nope@champion"]) == 1
