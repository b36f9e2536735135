"""The shortcut probe: logistic regression on a handful of spectral statistics.

If a label can be predicted from band-energy ratios, spectral flatness and energy spread,
the data (not the model) carries the answer; a generator on which this probe beats the
detector is reported as a failure of the detector. Features are computed per clip at 16 kHz.

This module must never use the network; it is deliberately shallow.
"""

from __future__ import annotations

import numpy as np

BANDS = ((0, 500), (500, 1000), (1000, 2000), (2000, 3000), (3000, 4000), (4000, 6000), (6000, 8000))
FEATURE_NAMES = tuple(
    [f"band_{lo}_{hi}" for lo, hi in BANDS]
    + ["flatness_mean", "flatness_std", "centroid_mean", "energy_std_db", "energy_range_db", "zcr"]
)


def features(x: np.ndarray, rate: int = 16000) -> np.ndarray:
    n_fft, hop = 512, 160
    x = np.asarray(x, dtype=np.float64)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    total = power.sum()
    ratios = [np.log10(power[:, (freqs >= lo) & (freqs < hi)].sum() / total + 1e-12) for lo, hi in BANDS]
    flat = np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)
    centroid = (power * freqs).sum(axis=1) / power.sum(axis=1)
    energy_db = 10 * np.log10(power.sum(axis=1))
    zcr = float(np.mean(np.abs(np.diff(np.sign(x))) > 0))
    return np.array(
        ratios
        + [
            float(flat.mean()),
            float(flat.std()),
            float(centroid.mean() / 1000.0),
            float(energy_db.std()),
            float(np.percentile(energy_db, 95) - np.percentile(energy_db, 5)),
            zcr,
        ],
        dtype=np.float64,
    )


def feature_matrix(clips: list[np.ndarray]) -> np.ndarray:
    return np.stack([features(c) for c in clips])


class ShortcutProbe:
    """Standardised features -> L2 logistic regression; `score` returns P(synthetic)."""

    def __init__(self) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))

    def fit(self, feats: np.ndarray, labels: np.ndarray) -> ShortcutProbe:
        self._model.fit(feats, labels)
        return self

    def score(self, feats: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict_proba(feats)[:, 1], dtype=np.float64)
