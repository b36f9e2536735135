"""The shipped artifact on disk: a weights file plus manifest.json, and its integrity check.

Layout: services/detector/artifacts/<name>/{weights.pt, manifest.json}. The manifest names
the weights' sha256; loading recomputes it and refuses a mismatch with FatalError
("model_checksum"), because a silently different model would produce verdicts nobody can
reproduce.

This module must never build or run a network; it only reads, writes and verifies files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.errors import FatalError

WEIGHTS_FILE = "weights.pt"
MANIFEST_FILE = "manifest.json"
#: the network after the front end as ONNX (services.detector.training.onnx_export) and its record
ONNX_FILE = "network.onnx"
ONNX_SIDECAR = "network.onnx.json"
ONNX_OPSET = 17
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_NAME = "audioguard-lfb-cnn"


@dataclass(frozen=True)
class ModelMeta:
    """What the manifest says about the model; travels with every verdict."""

    name: str
    version: str
    checksum: str  # sha256 of the weights file
    sample_rate: int
    window_seconds: float
    threshold: float  # EER point on dev, score space [0, 1]
    threshold_1pct_fa: float  # 1 % false alarm on dev, score space [0, 1]
    inconclusive_margin: float  # half-width of the inconclusive band around `threshold`
    min_tail_seconds: float
    calibration_scale: float  # score = sigmoid(scale * logit + bias), fitted on dev
    calibration_bias: float
    train_manifest_sha256: str
    frontend: dict[str, Any]
    network: dict[str, Any]
    parameters: int
    flops_per_window: int
    provisional: bool

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_artifact_dir() -> Path:
    return ARTIFACTS_DIR / DEFAULT_NAME


def read_manifest(directory: Path) -> tuple[ModelMeta, dict[str, Any]]:
    """Read and verify an artifact directory; returns the meta and the raw manifest."""
    manifest_path = directory / MANIFEST_FILE
    weights_path = directory / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        raise FatalError(
            "model_missing", f"no detector artifact at {directory} (need {MANIFEST_FILE} and {WEIGHTS_FILE})"
        )
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise FatalError("model_manifest", f"unreadable manifest {manifest_path}: {exc}") from exc
    actual = sha256_file(weights_path)
    expected = str(raw.get("checksum", ""))
    if actual != expected:
        raise FatalError(
            "model_checksum",
            f"weights {weights_path} have sha256 {actual} but the manifest expects {expected}: "
            "the artifact is corrupt or was changed without re-releasing it; refusing to load",
        )
    try:
        meta = ModelMeta(
            name=str(raw["name"]),
            version=str(raw["version"]),
            checksum=expected,
            sample_rate=int(raw["sample_rate"]),
            window_seconds=float(raw["window_seconds"]),
            threshold=float(raw["threshold"]),
            threshold_1pct_fa=float(raw["threshold_1pct_fa"]),
            inconclusive_margin=float(raw.get("inconclusive_margin", 0.05)),
            min_tail_seconds=float(raw.get("min_tail_seconds", 1.0)),
            calibration_scale=float(raw.get("calibration", {}).get("scale", 1.0)),
            calibration_bias=float(raw.get("calibration", {}).get("bias", 0.0)),
            train_manifest_sha256=str(raw.get("train_manifest_sha256", "")),
            frontend=dict(raw["frontend"]),
            network=dict(raw["network"]),
            parameters=int(raw.get("parameters", 0)),
            flops_per_window=int(raw.get("flops_per_window", 0)),
            provisional=bool(raw.get("provisional", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FatalError(
            "model_manifest", f"manifest {manifest_path} is missing or has a bad field: {exc}"
        ) from exc
    return meta, raw


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
