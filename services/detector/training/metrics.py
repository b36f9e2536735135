"""Detection metrics: EER, miss rate at a false-alarm rate, DET points, bootstrap intervals.

Convention everywhere: higher score = more likely synthetic; "positive" = synthetic; a false
alarm is a bona fide clip scored at or above the threshold, a miss a synthetic clip below it.

This module must never load models or audio; it works on score arrays only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _rates(bona: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (ascending, plus one past the top) with false-alarm and miss rates for
    `score >= threshold` decisions; tied scores always fall on the same side."""
    thresholds = np.unique(np.concatenate([bona, synth]))
    top = np.nextafter(thresholds[-1], np.inf) if thresholds.size else 1.0
    thresholds = np.append(thresholds, top)
    b, s = np.sort(bona), np.sort(synth)
    fa = 1.0 - np.searchsorted(b, thresholds, side="left") / max(1, b.size)
    miss = np.searchsorted(s, thresholds, side="left") / max(1, s.size)
    return thresholds, fa, miss


def eer(bona: np.ndarray, synth: np.ndarray) -> tuple[float, float]:
    """-> (equal error rate, threshold at that point)."""
    bona, synth = np.asarray(bona, np.float64), np.asarray(synth, np.float64)
    if bona.size == 0 or synth.size == 0:
        return float("nan"), float("nan")
    t, fa, miss = _rates(bona, synth)
    i = int(np.argmin(np.abs(fa - miss)))
    return float((fa[i] + miss[i]) / 2), float(t[i])


def miss_at_fa(bona: np.ndarray, synth: np.ndarray, fa_target: float = 0.01) -> tuple[float, float]:
    """-> (miss rate, threshold) at the lowest threshold whose false-alarm rate <= fa_target."""
    bona, synth = np.asarray(bona, np.float64), np.asarray(synth, np.float64)
    if bona.size == 0 or synth.size == 0:
        return float("nan"), float("nan")
    t, fa, miss = _rates(bona, synth)
    ok = np.nonzero(fa <= fa_target)[0]
    i = int(ok[0])
    return float(miss[i]), float(t[i])


def det_points(bona: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, fa, miss = _rates(np.asarray(bona, np.float64), np.asarray(synth, np.float64))
    return fa, miss


def bootstrap_ci(
    bona: np.ndarray,
    synth: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n: int = 300,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap, resampling each class independently (stratified)."""
    if n <= 0 or len(bona) == 0 or len(synth) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        b = bona[rng.integers(0, len(bona), len(bona))]
        s = synth[rng.integers(0, len(synth), len(synth))]
        vals.append(metric(b, s))
    lo, hi = np.nanpercentile(vals, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)
