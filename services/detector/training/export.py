"""Writing a trained network out as a shippable artifact (weights + manifest with checksum).

This module must never train or evaluate; it serialises what it is given, deterministically
(state dict only, loaded back with weights_only=True), and records the sha256 it wrote.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .._artifact import WEIGHTS_FILE, sha256_file, write_manifest
from .._model import DetectorNet, NetConfig, count_parameters, estimate_flops


def export_artifact(
    net: DetectorNet,
    network: NetConfig,
    directory: Path,
    *,
    name: str,
    version: str,
    window_seconds: float,
    threshold: float,
    threshold_1pct_fa: float,
    calibration_scale: float,
    calibration_bias: float,
    train_manifest_sha256: str,
    provisional: bool,
    inconclusive_margin: float = 0.05,
    min_tail_seconds: float = 1.0,
    extra: dict[str, Any] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(buf.getvalue())
    fe = net.frontend.config
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "checksum": sha256_file(weights),
        "checksum_algorithm": "sha256",
        "weights_file": WEIGHTS_FILE,
        "sample_rate": fe.sample_rate,
        "window_seconds": window_seconds,
        "threshold": threshold,
        "threshold_1pct_fa": threshold_1pct_fa,
        "inconclusive_margin": inconclusive_margin,
        "min_tail_seconds": min_tail_seconds,
        "calibration": {"scale": calibration_scale, "bias": calibration_bias},
        "decision_rule": "mean window score vs threshold; inconclusive within +/- inconclusive_margin",
        "train_manifest_sha256": train_manifest_sha256,
        "frontend": fe.to_dict(),
        "network": network.to_dict(),
        "parameters": count_parameters(net),
        "flops_per_window": estimate_flops(fe, network, int(round(fe.sample_rate * window_seconds))),
        "provisional": provisional,
        "torch_version": torch.__version__,
    }
    if extra:
        manifest.update(extra)
    write_manifest(directory, manifest)
    return directory
