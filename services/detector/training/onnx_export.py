"""Exporting a detector artifact's network to ONNX, for the ONNX Runtime scorer (services.detector._onnx).

Only the network after the front end is exported (front-end features (B, n_features, frames)
-> logits (B,)): the front end's complex STFT, irfft and Levinson loop do not go through the
TorchScript-based ONNX exporter, so it stays in torch at run time. The file is written beside
the artifact's weights as `network.onnx`, with `network.onnx.json` recording its sha256 and the
sha256 of the weights it came from, so a stale export is refused at load.

This module must never train, evaluate or serve; it serialises what it is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._artifact import ONNX_FILE, ONNX_OPSET, ONNX_SIDECAR, WEIGHTS_FILE, read_manifest, sha256_file
from .._model import DetectorNet
from .._runtime import build_net


class _Classify(torch.nn.Module):
    def __init__(self, net: DetectorNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net.classify(feats)
        return out


def export_onnx(artifact: Path, out_dir: Path | None = None) -> Path:
    """Artifact directory -> `<out_dir or artifact>/network.onnx` (+ its sidecar); returns the path."""
    meta, _ = read_manifest(artifact)  # verifies the weights' checksum
    net = build_net(meta.frontend, meta.network)
    net.load_state_dict(torch.load(artifact / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    net.eval()
    with torch.no_grad():
        feats = net.frontend(torch.zeros(2, meta.window_samples))
    target = (out_dir or artifact) / ONNX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _Classify(net),
        (feats,),
        str(target),
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    sidecar = {
        "sha256": sha256_file(target),
        "weights_sha256": meta.checksum,
        "opset": ONNX_OPSET,
        "input": "front-end features (batch, n_features, frames) float32",
        "output": "logits (batch,) float32",
        "torch_version": torch.__version__,
    }
    (target.parent / ONNX_SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return target
