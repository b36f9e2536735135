"""The home-made source-filter vocoders that make copy-synthesis training data."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.training.vocoder import RATE, analyse, cepstral_vocode, lpc_vocode


def _vowel(f0: float, seconds: float = 1.5) -> np.ndarray:
    """A glottal pulse train at f0 through two formant resonances, then 0.3 s of silence."""
    n = int(RATE * seconds)
    pulses = np.zeros(n)
    pulses[:: int(RATE / f0)] = 1.0
    t = np.arange(200) / RATE
    formants = np.exp(-t * 400) * (np.sin(2 * np.pi * 700 * t) + 0.5 * np.sin(2 * np.pi * 1200 * t))
    voiced = np.convolve(pulses, formants)[:n]
    return np.concatenate([voiced / np.abs(voiced).max() * 0.3, np.zeros(int(RATE * 0.3))])


def test_analysis_tracks_the_pitch_of_a_voiced_sound() -> None:
    an = analyse(_vowel(125.0), voicing_threshold=0.45)
    voiced = an.f0[an.f0 > 0]
    assert voiced.size > 0.6 * int(1.5 * RATE / 80)  # most of the vowel is voiced
    assert abs(float(np.median(voiced)) - 125.0) < 4.0
    assert (an.f0[-40:] == 0).all()  # the trailing silence is not


@pytest.mark.parametrize("vocode", [lpc_vocode, cepstral_vocode])
def test_vocoders_keep_length_level_and_pitch_and_repeat_for_a_seed(vocode) -> None:  # type: ignore[no-untyped-def]
    x = _vowel(140.0)
    y = vocode(x, np.random.default_rng(3))
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    voiced = slice(int(0.2 * RATE), int(1.3 * RATE))
    rms_in, rms_out = np.sqrt(np.mean(x[voiced] ** 2)), np.sqrt(np.mean(y[voiced] ** 2))
    assert 0.7 < rms_out / rms_in < 1.4
    f0_out = analyse(y.astype(np.float64), 0.3).f0
    f0_out = f0_out[f0_out > 0]
    # the vocoder redraws F0 within +-10 %; it must not lose it or jump an octave
    assert 140.0 * 0.85 < float(np.median(f0_out)) < 140.0 * 1.15
    assert not np.allclose(y, x, atol=1e-3)  # it really resynthesised
    assert np.array_equal(y, vocode(x, np.random.default_rng(3)))


def test_phase_vocoder_shifts_pitch_by_its_draw_and_keeps_length() -> None:
    from services.detector.training.sources import phase_vocode

    x = _vowel(140.0)
    shifted = []
    for seed in range(6):
        y = phase_vocode(x, np.random.default_rng(seed))
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
        f0 = analyse(y.astype(np.float64), 0.3).f0
        shifted.append(float(np.median(f0[f0 > 0])) / 140.0)
        assert np.array_equal(y, phase_vocode(x, np.random.default_rng(seed)))
    # every draw moves the pitch by 0.5-3 semitones, up or down (a factor 0.84-0.97 or 1.03-1.19)
    ratios = np.array(shifted)
    assert (np.abs(np.log2(ratios) * 12) > 0.3).all() and (np.abs(np.log2(ratios) * 12) < 3.4).all()
    assert (ratios > 1).any() and (ratios < 1).any()
