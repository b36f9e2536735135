"""The ONNX Runtime adapter: the only module that imports onnxruntime.

Runs the network after the front end (features -> logits) exported by
services.detector.training.onnx_export. Execution provider by device: "cuda" ->
CUDAExecutionProvider (refused when this onnxruntime build has none), "cpu" ->
CPUExecutionProvider with `threads` intra-op threads and one inter-op thread.

This module must never read audio, compute features or decide labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.errors import FatalError

from ._artifact import ONNX_SIDECAR, sha256_file


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (CPU only in the `onnxruntime` wheel)."""
    return list(ort.get_available_providers())


class OnnxNetwork:
    """A verified ONNX network in an InferenceSession; `run` is (B, F, T) float32 -> (B,) logits."""

    def __init__(self, path: Path, weights_sha256: str, device: str, threads: int) -> None:
        if not path.is_file():
            raise FatalError(
                "model_missing",
                f"no ONNX network at {path}; write it with "
                f"`audioguard model export-onnx --model {path.parent}`",
            )
        sidecar = path.parent / ONNX_SIDECAR
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            raise FatalError("model_manifest", f"unreadable ONNX record {sidecar}: {exc}") from exc
        if sha256_file(path) != record.get("sha256"):
            raise FatalError("model_checksum", f"{path} does not match the sha256 in {sidecar}")
        if record.get("weights_sha256") != weights_sha256:
            raise FatalError(
                "model_checksum",
                f"{path} was exported from other weights than the artifact's; export it again",
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting after a run: a spinning pool would hold the cores that torch's front
        # end and the worker's fetch threads need between calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available_providers():
                raise FatalError(
                    "bad_config",
                    "runtime onnx on cuda needs onnxruntime-gpu (CUDAExecutionProvider not available)",
                )
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            providers: list[str | tuple[str, dict[str, object]]] = [
                ("CUDAExecutionProvider", {"device_id": index}),
                "CPUExecutionProvider",
            ]
        else:
            providers = ["CPUExecutionProvider"]
        self.providers = providers
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def run(self, features: np.ndarray) -> np.ndarray:
        feeds = {self._input: np.ascontiguousarray(features, dtype=np.float32)}
        (out,) = self._session.run(None, feeds)
        return np.asarray(out, dtype=np.float32).reshape(-1)
