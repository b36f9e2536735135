"""RawBoost-style signal augmentation of training windows (after Tak et al., "RawBoost: a raw data
boosting and augmentation method applied to automatic speaker verification anti-spoofing",
ICASSP 2022; reimplemented here from the paper's description).

The channel chain of the data build (training.channel) already covers codecs, band limits, EQ and
additive noise, the same for both classes. What it does not cover is the paper's point: random
*convolutive and non-linear* distortion and *signal-dependent impulsive* noise, drawn afresh for
every training window, so that no fixed spectral or excitation detail of a generator stays a
reliable cue. Applied to both classes alike, on the cropped 4 s window (its cost does not grow with
the clip).

Three distortions, each with its own random draw:

- convolutive: the sum over orders j = 1..2 of (h_j * x)^j, each h_j a cascade of random band-stop
  FIR filters, the orders above one attenuated by 5-20 dB (a memoryless polynomial after a
  filter: the paper's "linear and non-linear convolutive noise");
- impulsive: up to 10 % of the samples, chosen at random, gain a multiple in [-2, 2] of their own
  value ("signal-dependent additive noise");
- stationary: white noise shaped by a random band-stop cascade at 10-40 dB SNR
  ("signal-independent additive noise").

A window that is augmented gets one of: convolutive then impulsive (the paper's best setting for
logical-access spoofing), convolutive, impulsive or stationary, with equal chance.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import firwin, oaconvolve

from .channel import RATE

#: band-stop cascade: bands per filter, centre frequency, bandwidth (Hz), taps per band
BANDS = 3
CENTRE_HZ = (20.0, 7800.0)
BANDWIDTH_HZ = (100.0, 1000.0)
TAPS = (11, 65)
#: non-linear orders of the convolutive distortion and the attenuation of orders above one
ORDERS = 2
HIGHER_ORDER_ATTENUATION_DB = (5.0, 20.0)
#: impulsive noise: the largest share of samples touched and the largest gain on each
IMPULSE_SHARE = 0.10
IMPULSE_GAIN = 2.0
#: stationary noise SNR range (dB)
SNR_DB = (10.0, 40.0)


def _band_stop(rng: np.random.Generator) -> np.ndarray:
    """The impulse response of BANDS random band-stop FIR filters in cascade."""
    h = np.ones(1)
    nyquist = RATE / 2
    for _ in range(BANDS):
        centre = rng.uniform(*CENTRE_HZ)
        width = rng.uniform(*BANDWIDTH_HZ)
        lo, hi = max(centre - width / 2, 10.0), min(centre + width / 2, nyquist - 10.0)
        if hi - lo < 20.0:
            continue
        taps = int(rng.integers(TAPS[0] // 2, TAPS[1] // 2 + 1)) * 2 + 1  # odd: a band-stop needs it
        h = np.convolve(h, firwin(taps, [lo, hi], pass_zero="bandstop", fs=RATE))
    return h


def _filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    # overlap-add: the kernels are short against a 64,000-sample window; float32 halves the cost
    return np.asarray(oaconvolve(x.astype(np.float32), h.astype(np.float32), mode="same"))


def _peak_normalise(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Scale y to like's peak, so the augmentation changes the signal's shape, not its level."""
    peak, target = float(np.max(np.abs(y))), float(np.max(np.abs(like)))
    return y if peak == 0.0 else y * np.float32(target / peak)


def convolutive(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = np.zeros_like(x, dtype=np.float32)
    for order in range(1, ORDERS + 1):
        term = _filter(x, _band_stop(rng)) ** order
        if order > 1:
            term *= 10 ** (-rng.uniform(*HIGHER_ORDER_ATTENUATION_DB) / 20)
        y += term
    return _peak_normalise(y, x)


def impulsive(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = x.astype(np.float32, copy=True)
    n = int(rng.uniform(0.0, IMPULSE_SHARE) * x.size)
    where = np.unique(rng.integers(0, x.size, size=n))
    y[where] += y[where] * rng.uniform(-IMPULSE_GAIN, IMPULSE_GAIN, size=where.size).astype(np.float32)
    return y


def stationary(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = _filter(rng.standard_normal(x.size, dtype=np.float32), _band_stop(rng))
    signal_power, noise_power = float(np.mean(x.astype(np.float64) ** 2)), float(np.mean(noise**2))
    if signal_power == 0.0 or noise_power == 0.0:
        return x
    snr = 10 ** (rng.uniform(*SNR_DB) / 10)
    return np.asarray(x + noise * np.float32(np.sqrt(signal_power / (snr * noise_power))))


def rawboost(x: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """With probability p, one RawBoost distortion of the window x (float32 in, float32 out)."""
    if p <= 0 or rng.random() >= p:
        return x
    kind = int(rng.integers(4))
    if kind == 0:
        y = impulsive(convolutive(x, rng), rng)
    elif kind == 1:
        y = convolutive(x, rng)
    elif kind == 2:
        y = impulsive(x, rng)
    else:
        y = stationary(x, rng)
    return np.asarray(np.clip(y, -1.0, 1.0), dtype=np.float32)
