"""The per-upload decision from window scores: torch-free, shared by the detector and the null scorer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas import Label

__all__ = ["Decision", "decide"]


@dataclass(frozen=True)
class Decision:
    """One upload's verdict material."""

    score: float  # in [0, 1], higher = more likely synthetic
    label: Label
    threshold: float
    window_count: int
    mean: float
    minimum: float
    maximum: float
    fraction_over_threshold: float


def decide(window_scores: np.ndarray, threshold: float, margin: float) -> Decision:
    scores = np.asarray(window_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("decide() needs at least one window score")
    mean = float(scores.mean())
    if abs(mean - threshold) < margin:
        label: Label = "inconclusive"
    elif mean >= threshold:
        label = "synthetic"
    else:
        label = "bona_fide"
    return Decision(
        score=mean,
        label=label,
        threshold=float(threshold),
        window_count=int(scores.size),
        mean=mean,
        minimum=float(scores.min()),
        maximum=float(scores.max()),
        fraction_over_threshold=float((scores >= threshold).mean()),
    )
