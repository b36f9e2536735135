"""The null scorer: the detector's shape with constant scores at no cost.

`audioguard worker --scorer null` and `audioguard bench --scorer null` run the whole pipeline
with it so that the framework's own ceiling (fetch, decode, batching, publish, commit) can be
measured apart from the model, as Triton's identity models are used. Verdicts carry the model
name `null`, so they can never pass for real ones. Never the default. Torch-free: importing it
costs nothing and pulls in no model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ._artifact import ModelMeta, default_artifact_dir, read_manifest
from ._decision import Decision, decide

__all__ = ["NULL_MODEL_NAME", "NullScorer", "load_null_scorer"]

NULL_MODEL_NAME = "null"
# below the shipped threshold's inconclusive band would also do; the exact value is immaterial,
# constant makes every null verdict identical and easy to recognise
NULL_SCORE = 0.0


class NullScorer:
    """consumers.ports.Detector with the real model's window geometry and no work per window."""

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = replace(meta, name=NULL_MODEL_NAME, checksum="0" * 64)
        self.device = "cpu"
        self._window = np.zeros((1, self.meta.window_samples), dtype=np.float32)

    def windows(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        # the real front end's window count (same rule as cut_windows: a tail of at least
        # min_tail_seconds counts, and there is always one), without resampling or copying
        seconds = len(samples) / float(sample_rate)
        full, tail = divmod(seconds, self.meta.window_seconds)
        count = max(1, int(full) + (1 if tail >= self.meta.min_tail_seconds else 0))
        return np.broadcast_to(self._window, (count, self.meta.window_samples))

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        return np.full(len(windows), NULL_SCORE, dtype=np.float32)

    def speech(self, windows: np.ndarray) -> np.ndarray | None:
        # no speech check: the null scorer measures the framework, and costs nothing per window
        return None

    def decide(
        self,
        window_scores: np.ndarray,
        speech: np.ndarray | None = None,
        duration_seconds: float | None = None,
    ) -> Decision:
        return decide(
            window_scores,
            self.meta.threshold,
            self.meta.inconclusive_margin,
            speech,
            window_seconds=self.meta.window_seconds,
            duration_seconds=duration_seconds,
        )

    def memory_stats(self) -> dict[str, int] | None:
        return None


def load_null_scorer(path: str | Path | None = None) -> NullScorer:
    """The null scorer with the geometry of the artifact at `path` (default: the shipped one)."""
    meta, _ = read_manifest(Path(path) if path is not None else default_artifact_dir())
    return NullScorer(meta)
