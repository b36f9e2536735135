"""RawBoost-style training augmentation: each distortion does what its name says, keeps the
window's length, type and range, and the whole is reproducible for a seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from services.detector.training import rawboost as rb

RATE = rb.RATE


def _voice_like(seconds: float = 4.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    harmonics = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 30))
    return (0.2 * harmonics / np.max(np.abs(harmonics)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )


def test_off_and_not_drawn_return_the_window_itself() -> None:
    x = _voice_like()
    assert rb.rawboost(x, np.random.default_rng(0), 0.0) is x
    untouched = [rb.rawboost(x, np.random.default_rng(seed), 0.5) is x for seed in range(40)]
    assert 5 < sum(untouched) < 35  # about half the windows are left as they are


@pytest.mark.parametrize("seed", range(8))
def test_every_draw_keeps_length_type_and_range(seed: int) -> None:
    x = _voice_like()
    y = rb.rawboost(x, np.random.default_rng(seed), 1.0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
    assert not np.array_equal(y, x)


def test_same_seed_same_distortion() -> None:
    x = _voice_like()
    a = rb.rawboost(x, np.random.default_rng(5), 1.0)
    b = rb.rawboost(x, np.random.default_rng(5), 1.0)
    np.testing.assert_array_equal(a, b)


def test_band_stop_cascades_colour_the_spectrum_differently_each_draw() -> None:
    # short FIRs make shallow, rippled notches: random colouring, not surgical band removal
    freqs = np.fft.rfftfreq(4096, 1 / RATE)
    inside = (freqs > 100) & (freqs < 7900)
    gains = [
        np.abs(np.fft.rfft(rb._band_stop(np.random.default_rng(seed)), 4096))[inside] for seed in range(6)
    ]
    spread_db = [20 * np.log10(g.max() / max(g.min(), 1e-9)) for g in gains]
    assert min(spread_db) > 3.0 and np.mean(spread_db) > 10.0
    assert all(not np.allclose(gains[0], g) for g in gains[1:])


def test_convolutive_keeps_peak_and_changes_the_spectrum() -> None:
    x = _voice_like()
    y = rb.convolutive(x, np.random.default_rng(2))
    assert np.max(np.abs(y)) == pytest.approx(np.max(np.abs(x)), rel=1e-5)
    _, px = welch(x, RATE, nperseg=1024)
    _, py = welch(y, RATE, nperseg=1024)
    assert np.max(np.abs(10 * np.log10((py + 1e-12) / (px + 1e-12)))) > 6.0


def test_impulsive_touches_only_a_few_samples_in_proportion_to_them() -> None:
    x = _voice_like()
    y = rb.impulsive(x, np.random.default_rng(4))
    changed = np.flatnonzero(y != x)
    assert 0 < changed.size <= rb.IMPULSE_SHARE * x.size
    ratio = (y[changed] - x[changed]) / x[changed]
    assert np.all(np.abs(ratio) <= rb.IMPULSE_GAIN + 1e-6)


def test_stationary_noise_lands_in_its_snr_range() -> None:
    x = _voice_like()
    for seed in range(6):
        y = rb.stationary(x, np.random.default_rng(seed))
        noise = y - x
        snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
        assert rb.SNR_DB[0] - 0.01 <= snr <= rb.SNR_DB[1] + 0.01


def test_silence_stays_silent_under_every_distortion() -> None:
    x = np.zeros(RATE, dtype=np.float32)
    for seed in range(8):
        assert np.all(rb.rawboost(x, np.random.default_rng(seed), 1.0) == 0.0)
