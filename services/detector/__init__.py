"""The AI-generated-speech detector: the only package in audioguard that imports torch.

Public surface (numpy in, numpy / frozen dataclasses out, so callers never touch torch):
`load_detector`, `Detector`, `ModelMeta`, `Decision`. Training, evaluation and the data
build live in private modules reached through the `audioguard data|train|eval|score`
commands (services.cli.detector).

Nothing here may download weights or data at run time: the model ships under
services/detector/artifacts/ with its checksum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._artifact import ONNX_FILE, ONNX_SIDECAR, ModelMeta, default_artifact_dir, read_manifest, sha256_file
from ._decision import Decision

if TYPE_CHECKING:
    from ._runtime import Detector, configure_torch_threads, load_detector

_RUNTIME = frozenset({"Detector", "configure_torch_threads", "load_detector"})


def __getattr__(name: str) -> Any:
    # torch is imported on first use, not on `import services.detector`: every CLI command
    # (and `--help`) imports the detector's sub-command module, and torch takes seconds.
    if name in _RUNTIME:
        from . import _runtime

        return getattr(_runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ONNX_FILE",
    "ONNX_SIDECAR",
    "Decision",
    "Detector",
    "ModelMeta",
    "configure_torch_threads",
    "default_artifact_dir",
    "load_detector",
    "read_manifest",
    "sha256_file",
]
