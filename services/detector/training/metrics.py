"""Detection metrics: EER, miss rate at a false-alarm rate, DET points, bootstrap intervals,
expected calibration error and reliability bins.

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


def reliability(
    scores: np.ndarray, labels: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width score bins over [0, 1] -> (bin edges, mean score, share synthetic, count)
    per bin; an empty bin has NaN means and count 0. The last bin includes 1.0."""
    scores = np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    labels = np.asarray(labels, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.minimum(np.searchsorted(edges, scores, side="right") - 1, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(which, weights=scores, minlength=bins) / count
        share = np.bincount(which, weights=labels, minlength=bins) / count
    return edges, mean_score, share, count


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of P(synthetic): sum over equal-width bins of (share of clips in the bin) x
    |share synthetic - mean score|. 0 is perfect; a model that says 0.99 on clips of which
    half are synthetic scores ~0.49 on them. NaN for no clips."""
    _, mean_score, share, count = reliability(scores, labels, bins)
    total = int(count.sum())
    if total == 0:
        return float("nan")
    used = count > 0
    return float(np.sum(count[used] / total * np.abs(share[used] - mean_score[used])))
