"""The registry on an MLflow tracking server: the only module in audioguard that imports mlflow.

A version is an MLflow model version whose source is the `artifact/` directory of a run in the
experiment `audioguard-registry` (weights.pt, manifest.json, model-card.md, uploaded through the
tracking server, which keeps them in its artifact store: S3 in production, moto S3 in the tests).
What the file backend keeps in version.json is kept as version tags (`audioguard.sha256`, ...);
aliases are MLflow's own; the audit trail is one registered-model tag per move
(`audioguard.audit.000042` = the AliasEvent as JSON), because MLflow keeps no alias history.

MLflow's errors are mapped into the project's tree here, in `_mapped`, and nowhere else. This
module must never import torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.detector import sha256_file
from services.errors import FatalError, RetryableError

from ._file import copy_artifact
from ._model import AliasEvent, ModelRef, ModelVersion, actor, now, validate_alias, validate_name

__all__ = ["MlflowRegistry"]

EXPERIMENT = "audioguard-registry"
TAG = "audioguard."
AUDIT = "audioguard.audit."


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        code = str(getattr(exc, "error_code", ""))
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise FatalError("model_not_found", f"{what}: {exc.message}") from exc
        if code in {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}:
            raise FatalError("bad_config", f"{what}: {exc.message}") from exc
        if code in {"PERMISSION_DENIED", "UNAUTHENTICATED"}:
            raise FatalError("registry_auth", f"{what}: {exc.message}") from exc
        raise RetryableError("registry_unreachable", f"{what}: {exc.message}") from exc
    except OSError as exc:  # requests' connection errors are OSErrors
        raise RetryableError("registry_unreachable", f"{what}: {exc}") from exc


class MlflowRegistry:
    """services.registry.ModelRegistry on an MLflow tracking server (`http(s)://host:port`)."""

    def __init__(self, tracking_uri: str, *, cache_dir: Path | None = None, http_retries: int = 2) -> None:
        # MLflow's default is 7 retries with backoff (minutes); a worker polling its alias, or an
        # operator at a prompt, wants to hear about an outage in seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # MLflow prints a run URL on stdout when a run ends: the CLI's output is ours
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_PRINT_MODEL_URLS_ON_CREATION", "false")
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._cache = cache_dir or Path(tempfile.gettempdir()) / "audioguard-model-cache"

    def _experiment_id(self) -> str:
        with _mapped("experiment"):
            found = self._client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                return str(found.experiment_id)
            return str(self._client.create_experiment(EXPERIMENT))

    def _to_version(self, raw: Any) -> ModelVersion:
        tags = dict(raw.tags or {})
        return ModelVersion(
            name=str(raw.name),
            version=int(raw.version),
            sha256=tags.get(TAG + "sha256", ""),
            manifest_version=tags.get(TAG + "manifest_version", ""),
            train_manifest_sha256=tags.get(TAG + "train_manifest_sha256", ""),
            eval_results=json.loads(tags.get(TAG + "eval_results", "{}")),
            created_at=datetime.fromtimestamp(int(raw.creation_timestamp) / 1000, UTC),
            created_by=tags.get(TAG + "created_by", ""),
            description=str(raw.description or ""),
            has_card=tags.get(TAG + "has_card", "false") == "true",
            aliases=tuple(sorted(raw.aliases or ())),
            source=str(raw.source),
        )

    def register(
        self,
        name: str,
        artifact_dir: Path,
        *,
        eval_results: dict[str, Any] | None = None,
        card: Path | None = None,
        description: str = "",
    ) -> ModelVersion:
        validate_name(name)
        with tempfile.TemporaryDirectory(prefix="audioguard-register-") as staging:
            sha256, raw, has_card = copy_artifact(Path(artifact_dir), Path(staging), card)
            results = eval_results if eval_results is not None else dict(raw.get("dev_metrics") or {})
            with _mapped(f"register {name}"):
                try:
                    self._client.create_registered_model(name)
                except Exception as exc:  # noqa: BLE001 - already there is the usual case
                    if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                        raise
                run = self._client.create_run(self._experiment_id(), run_name=f"register-{name}")
                run_id = run.info.run_id
                self._client.log_artifacts(run_id, staging, artifact_path="artifact")
                self._client.set_terminated(run_id)
                tags = {
                    TAG + "sha256": sha256,
                    TAG + "manifest_version": str(raw.get("version", "")),
                    TAG + "train_manifest_sha256": str(raw.get("train_manifest_sha256", "")),
                    TAG + "eval_results": json.dumps(results, sort_keys=True),
                    TAG + "created_by": actor(),
                    TAG + "has_card": "true" if has_card else "false",
                }
                created = self._client.create_model_version(
                    name,
                    source=f"{run.info.artifact_uri}/artifact",
                    run_id=run_id,
                    tags=tags,
                    description=description,
                )
                return self._to_version(self._client.get_model_version(name, str(created.version)))

    def names(self) -> list[str]:
        with _mapped("list models"):
            return sorted(str(m.name) for m in self._client.search_registered_models())

    def versions(self, name: str) -> list[ModelVersion]:
        with _mapped(f"versions of {name}"):
            found = self._client.search_model_versions(f"name='{validate_name(name)}'")
        # search results leave the aliases out (MLflow fills them only on get): add them here
        aliases = self.aliases(name)
        versions = (self._to_version(v) for v in found)
        return sorted(
            (
                replace(v, aliases=tuple(sorted(a for a, n in aliases.items() if n == v.version)))
                for v in versions
            ),
            key=lambda v: v.version,
        )

    def get(self, name: str, version: int) -> ModelVersion:
        with _mapped(f"{name} version {version}"):
            return self._to_version(self._client.get_model_version(validate_name(name), str(version)))

    def aliases(self, name: str) -> dict[str, int]:
        with _mapped(f"aliases of {name}"):
            model = self._client.get_registered_model(validate_name(name))
            return {str(k): int(v) for k, v in (model.aliases or {}).items()}

    def resolve(self, ref: ModelRef) -> ModelVersion:
        if ref.alias is None:
            assert ref.version is not None
            return self.get(ref.name, ref.version)
        with _mapped(str(ref)):
            return self._to_version(self._client.get_model_version_by_alias(ref.name, ref.alias))

    def record_eval(self, name: str, version: int, key: str, value: Any) -> ModelVersion:
        current = self.get(name, version)
        results = {**current.eval_results, key: value}
        with _mapped(f"eval results of {name} version {version}"):
            self._client.set_model_version_tag(
                name, str(version), TAG + "eval_results", json.dumps(results, sort_keys=True)
            )
        return self.get(name, version)

    def _audit(self, event: AliasEvent) -> None:
        with _mapped(f"audit of {event.name}"):
            model = self._client.get_registered_model(event.name)
            seq = sum(1 for key in (model.tags or {}) if key.startswith(AUDIT)) + 1
            self._client.set_registered_model_tag(
                event.name, f"{AUDIT}{seq:06d}", json.dumps(event.to_json(), sort_keys=True)
            )

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        action: str = "alias",
        reason: str = "",
        extra: dict[str, Any] | None = None,
    ) -> AliasEvent:
        validate_alias(alias)
        self.get(name, version)  # refuses an unknown version with model_not_found
        previous = self.aliases(name).get(alias)
        event = AliasEvent(name, alias, version, previous, actor(), now(), action, reason, extra or {})
        # the audit record first: an alias never moves without its record
        self._audit(event)
        with _mapped(f"set {name}@{alias}"):
            self._client.set_registered_model_alias(name, alias, str(version))
        return event

    def delete_alias(self, name: str, alias: str, *, reason: str = "") -> AliasEvent:
        previous = self.aliases(name).get(alias)
        if previous is None:
            raise FatalError("model_not_found", f"model {name} has no alias {alias!r}")
        event = AliasEvent(name, alias, None, previous, actor(), now(), "delete", reason)
        self._audit(event)
        with _mapped(f"delete {name}@{alias}"):
            self._client.delete_registered_model_alias(name, alias)
        return event

    def history(self, name: str) -> list[AliasEvent]:
        with _mapped(f"history of {name}"):
            model = self._client.get_registered_model(validate_name(name))
        tags = {k: v for k, v in (model.tags or {}).items() if k.startswith(AUDIT)}
        return [AliasEvent.from_json(json.loads(tags[k])) for k in sorted(tags)]

    def fetch(self, name: str, version: int, into: Path | None = None) -> Path:
        record = self.get(name, version)
        target = into or self._cache / name / f"{version}-{record.sha256[:16]}"
        weights = target / "weights.pt"
        if weights.is_file() and sha256_file(weights) == record.sha256:
            return target
        staging = Path(tempfile.mkdtemp(prefix="audioguard-fetch-"))
        try:
            import mlflow.artifacts

            with _mapped(f"download {name} version {version}"):
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=record.source, dst_path=str(staging), tracking_uri=self.uri
                    )
                )
            if sha256_file(local / "weights.pt") != record.sha256:
                raise FatalError(
                    "model_checksum",
                    f"{name} version {version} from {self.uri}: the downloaded weights do not match the "
                    f"registered sha256 {record.sha256}; refusing to load",
                )
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(local), str(target))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
