"""The AI-generated-speech detector: the only package in audioguard that imports torch.

Public surface (numpy in, numpy / frozen dataclasses out, so callers never touch torch):
`load_detector`, `Detector`, `ModelMeta`, `Decision`. Training, evaluation and the data
build live in private modules reached through the `audioguard data|train|eval|score`
commands (services.detector.cli).

Nothing here may download weights or data at run time: the model ships under
services/detector/artifacts/ with its checksum.
"""

from ._artifact import ModelMeta, default_artifact_dir
from ._runtime import Decision, Detector, configure_torch_threads, load_detector

__all__ = [
    "Decision",
    "Detector",
    "ModelMeta",
    "configure_torch_threads",
    "default_artifact_dir",
    "load_detector",
]
