"""Registries and candidate artifacts for the model-lifecycle tests (gate, variants, tenant sets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from services.detector import default_artifact_dir, read_manifest
from services.registry import FileRegistry

NAME = "audioguard-lfb-cnn"


def shipped_version() -> str:
    """The version in the shipped artifact's manifest (registry versions are `<it>+r<n>`)."""
    return read_manifest(default_artifact_dir())[0].version


def registry_with_champion(root: Path) -> FileRegistry:
    """A file registry at `root` whose version 1, the shipped artifact, is the champion."""
    registry = FileRegistry(root)
    registry.register(NAME, default_artifact_dir())
    registry.set_alias(NAME, "champion", 1, reason="shipped")
    return registry


def biased_artifact(out: Path, bias: float, tag: str) -> Path:
    """A copy of the shipped artifact at `out` with `bias` added to the calibrated logit, so every
    score moves towards synthetic (bias > 0) by a known amount; its version says `tag`."""
    shutil.copytree(default_artifact_dir(), out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["calibration"]["bias"] += bias
    manifest["version"] = f"{manifest['version']}-{tag}"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
