"""The embedded registry: versions and aliases as files under one directory.

Layout, one directory per model name:

    <root>/<name>/versions/<n>/artifact/{weights.pt, manifest.json[, model-card.md]}
    <root>/<name>/versions/<n>/version.json     sha256, training manifest hash, eval results, who, when
    <root>/<name>/aliases.json                  {"champion": 3, "challenger": 4}
    <root>/<name>/audit.jsonl                   one AliasEvent per line, append-only
    <root>/<name>/.lock                         flock: one writer at a time across processes

Every file is written to a temporary name and renamed, so a reader (a worker polling its alias)
never sees half a file. This module must never import a network SDK or torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from services.detector import ONNX_FILE, ONNX_SIDECAR, read_manifest, sha256_file
from services.errors import FatalError

from ._model import AliasEvent, ModelRef, ModelVersion, actor, now, validate_alias, validate_name

__all__ = ["FileRegistry", "copy_artifact"]

CARD_FILE = "model-card.md"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def copy_artifact(artifact_dir: Path, into: Path, card: Path | None) -> tuple[str, dict[str, Any], bool]:
    """Verify `artifact_dir` (its weights against its manifest) and copy it to `into`;
    returns (sha256, raw manifest, whether a model card came along)."""
    meta, raw = read_manifest(artifact_dir)
    into.mkdir(parents=True, exist_ok=True)
    for item in ("weights.pt", "manifest.json"):
        shutil.copy2(artifact_dir / item, into / item)
    # an exported network (fp32 or a reduced-precision variant) travels with its version, so a
    # worker with runtime = "onnx" serves what the gate scored; it is verified at load
    for item in (ONNX_FILE, ONNX_SIDECAR):
        if (artifact_dir / item).is_file():
            shutil.copy2(artifact_dir / item, into / item)
    card_source = card if card is not None else artifact_dir / CARD_FILE
    has_card = card_source.is_file()
    if card is not None and not has_card:
        raise FatalError("bad_config", f"model card {card} does not exist")
    if has_card:
        shutil.copy2(card_source, into / CARD_FILE)
    if sha256_file(into / "weights.pt") != meta.checksum:
        raise FatalError("model_checksum", f"the copy of {artifact_dir} does not match its manifest")
    return meta.checksum, raw, has_card


class FileRegistry:
    """services.registry.ModelRegistry on a local (or shared) directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = f"file://{self.root}"

    # -- helpers ------------------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        directory = self._model_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield directory
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_aliases(self, directory: Path) -> dict[str, int]:
        path = directory / "aliases.json"
        if not path.is_file():
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError) as exc:
            raise FatalError("registry_corrupt", f"unreadable {path}: {exc}") from exc

    def _version_numbers(self, directory: Path) -> list[int]:
        versions = directory / "versions"
        if not versions.is_dir():
            return []
        return sorted(
            int(p.name) for p in versions.iterdir() if p.name.isdigit() and (p / "version.json").is_file()
        )

    def _load_version(self, directory: Path, number: int, aliases: dict[str, int]) -> ModelVersion:
        path = directory / "versions" / str(number) / "version.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FatalError("model_not_found", f"no version {number} of model {directory.name}") from None
        except (OSError, ValueError) as exc:
            raise FatalError("registry_corrupt", f"unreadable {path}: {exc}") from exc
        return ModelVersion(
            name=directory.name,
            version=number,
            sha256=str(raw["sha256"]),
            manifest_version=str(raw.get("manifest_version", "")),
            train_manifest_sha256=str(raw.get("train_manifest_sha256", "")),
            eval_results=dict(raw.get("eval_results") or {}),
            created_at=datetime.fromisoformat(str(raw["created_at"])),
            created_by=str(raw.get("created_by", "")),
            description=str(raw.get("description", "")),
            has_card=bool(raw.get("has_card", False)),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == number)),
            source=str(path.parent / "artifact"),
        )

    # -- the interface ----------------------------------------------------------------------
    def register(
        self,
        name: str,
        artifact_dir: Path,
        *,
        eval_results: dict[str, Any] | None = None,
        card: Path | None = None,
        description: str = "",
    ) -> ModelVersion:
        with self._locked(name) as directory:
            numbers = self._version_numbers(directory)
            number = (numbers[-1] if numbers else 0) + 1
            target = directory / "versions" / str(number)
            staging = Path(tempfile.mkdtemp(dir=directory, prefix=".staging-"))
            try:
                sha256, raw, has_card = copy_artifact(Path(artifact_dir), staging / "artifact", card)
                record = {
                    "sha256": sha256,
                    "manifest_version": str(raw.get("version", "")),
                    "train_manifest_sha256": str(raw.get("train_manifest_sha256", "")),
                    "eval_results": (
                        eval_results if eval_results is not None else dict(raw.get("dev_metrics") or {})
                    ),
                    "created_at": now().isoformat(),
                    "created_by": actor(),
                    "description": description,
                    "has_card": has_card,
                }
                _write_atomic(staging / "version.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return self._load_version(directory, number, self._read_aliases(directory))

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "versions").is_dir())

    def versions(self, name: str) -> list[ModelVersion]:
        directory = self._model_dir(name)
        aliases = self._read_aliases(directory)
        return [self._load_version(directory, n, aliases) for n in self._version_numbers(directory)]

    def get(self, name: str, version: int) -> ModelVersion:
        directory = self._model_dir(name)
        return self._load_version(directory, version, self._read_aliases(directory))

    def aliases(self, name: str) -> dict[str, int]:
        return self._read_aliases(self._model_dir(name))

    def resolve(self, ref: ModelRef) -> ModelVersion:
        directory = self._model_dir(ref.name)
        aliases = self._read_aliases(directory)
        if ref.alias is not None:
            if ref.alias not in aliases:
                raise FatalError(
                    "model_not_found",
                    f"{ref}: model {ref.name} has no alias {ref.alias!r} in {self.uri} "
                    f"(aliases: {', '.join(sorted(aliases)) or 'none'})",
                )
            return self._load_version(directory, aliases[ref.alias], aliases)
        assert ref.version is not None
        return self._load_version(directory, ref.version, aliases)

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
        with self._locked(name) as directory:
            aliases = self._read_aliases(directory)
            self._load_version(directory, version, aliases)  # refuses an unknown version
            event = AliasEvent(
                name, alias, version, aliases.get(alias), actor(), now(), action, reason, extra or {}
            )
            aliases[alias] = version
            self._append_audit(directory, event)
            _write_atomic(directory / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True) + "\n")
            return event

    def delete_alias(self, name: str, alias: str, *, reason: str = "") -> AliasEvent:
        with self._locked(name) as directory:
            aliases = self._read_aliases(directory)
            if alias not in aliases:
                raise FatalError("model_not_found", f"model {name} has no alias {alias!r}")
            event = AliasEvent(name, alias, None, aliases.pop(alias), actor(), now(), "delete", reason)
            self._append_audit(directory, event)
            _write_atomic(directory / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True) + "\n")
            return event

    def record_eval(self, name: str, version: int, key: str, value: Any) -> ModelVersion:
        with self._locked(name) as directory:
            path = directory / "versions" / str(version) / "version.json"
            self._load_version(directory, version, {})  # refuses an unknown version
            raw = json.loads(path.read_text())
            raw["eval_results"] = {**dict(raw.get("eval_results") or {}), key: value}
            _write_atomic(path, json.dumps(raw, indent=2, sort_keys=True) + "\n")
            return self._load_version(directory, version, self._read_aliases(directory))

    def _append_audit(self, directory: Path, event: AliasEvent) -> None:
        # the audit line first: an alias never moves without its record
        with open(directory / "audit.jsonl", "a") as handle:
            handle.write(json.dumps(event.to_json(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def history(self, name: str) -> list[AliasEvent]:
        path = self._model_dir(name) / "audit.jsonl"
        if not path.is_file():
            return []
        lines = path.read_text().splitlines()
        return [AliasEvent.from_json(json.loads(line)) for line in lines if line.strip()]

    def fetch(self, name: str, version: int, into: Path | None = None) -> Path:
        record = self.get(name, version)
        directory = Path(record.source)
        if sha256_file(directory / "weights.pt") != record.sha256:
            raise FatalError(
                "model_checksum",
                f"{name} version {version} in {self.uri}: the weights no longer match the registered "
                f"sha256 {record.sha256}; refusing to load",
            )
        return directory
