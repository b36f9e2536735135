"""The model registry: versions, aliases and their audit trail, and the worker's hot swap.

Public surface: `open_registry(uri)` -> a `ModelRegistry` (a directory: the embedded file
backend; `http(s)://`: an MLflow tracking server), `parse_model_uri`, the values `ModelVersion`,
`AliasEvent`, `ModelRef`, and `AliasWatcher` (polls an alias, loads and warms the new version,
hands it over). `docs/models.md` describes the lifecycle.

The worker calls this room (services.tools.worker); it sits between `consumers` and the detector
runtime. It must never import torch (the detector loads weights) and only `_mlflow` imports mlflow.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._compare import LABELS, PairStats, ShadowRow, compare
from ._file import FileRegistry
from ._lifecycle import gate_passed, promote, rollback
from ._model import (
    ALIASES,
    AliasEvent,
    ModelRef,
    ModelRegistry,
    ModelVersion,
    actor,
    parse_model_uri,
    registry_version_of,
    validate_alias,
    validate_name,
)
from ._shadow import ShadowTable
from ._watch import AliasWatcher

__all__ = [
    "ALIASES",
    "LABELS",
    "AliasEvent",
    "AliasWatcher",
    "FileRegistry",
    "ModelRef",
    "ModelRegistry",
    "ModelVersion",
    "actor",
    "default_registry_dir",
    "gate_passed",
    "PairStats",
    "ShadowRow",
    "ShadowTable",
    "compare",
    "open_registry",
    "parse_model_uri",
    "promote",
    "registry_version_of",
    "rollback",
    "validate_alias",
    "validate_name",
]


def default_registry_dir() -> Path:
    """The embedded registry's home: $AUDIOGUARD_DATA_DIR/registry, else
    $XDG_DATA_HOME/audioguard/registry (~/.local/share/audioguard/registry)."""
    data = os.environ.get("AUDIOGUARD_DATA_DIR")
    if data:
        return Path(data) / "registry"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "audioguard" / "registry"


def open_registry(uri: str | None = None, *, cache_dir: Path | None = None) -> ModelRegistry:
    """`None` or a directory / `file://` URI: the file registry; `http(s)://`: MLflow."""
    if uri is None or uri == "":
        return FileRegistry(default_registry_dir())
    if uri.startswith(("http://", "https://")):
        from ._mlflow import MlflowRegistry

        return MlflowRegistry(uri, cache_dir=cache_dir)
    if uri.startswith("file://"):
        return FileRegistry(Path(uri[len("file://") :]))
    if "://" in uri:
        from services.errors import FatalError

        raise FatalError(
            "bad_config", f"registry uri {uri!r}: expected a directory, file://, http:// or https://"
        )
    return FileRegistry(Path(uri))
