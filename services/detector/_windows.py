"""Cutting mono audio at any rate into the detector's fixed windows at the model rate.

Rule: resample to the model rate (torchaudio, band-limited sinc), cut consecutive
non-overlapping windows; a partial tail is repeat-padded (the tail tiled until the window is
full) when it is at least `min_tail_seconds` long or when it is the only audio there is, and
dropped otherwise, because a few hundred milliseconds tiled into four seconds is a buzz, not
speech, and would only add noise to the verdict. There is always at least one window.

This module must never touch the model or the GPU; it is pure CPU and thread-safe (no shared
state), so the worker may call it from its fetch thread pool.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio


def to_mono_float32(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32; channels are averaged."""
    arr = np.asarray(samples)
    if arr.ndim == 2:
        arr = arr.mean(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"expected 1-D mono or 2-D (frames, channels) samples, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    mono = to_mono_float32(samples)
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate == target_rate or mono.size == 0:
        return mono
    out = torchaudio.functional.resample(torch.from_numpy(mono), sample_rate, target_rate)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def repeat_pad(chunk: np.ndarray, length: int) -> np.ndarray:
    if chunk.size == 0:
        return np.zeros(length, dtype=np.float32)
    reps = -(-length // chunk.size)
    return np.tile(chunk, reps)[:length].astype(np.float32, copy=False)


def cut_windows(samples: np.ndarray, window_samples: int, min_tail_samples: int) -> np.ndarray:
    """Mono samples at the model rate -> (n_windows, window_samples) float32, n_windows >= 1."""
    mono = to_mono_float32(samples)
    full = mono.size // window_samples
    rows = [mono[i * window_samples : (i + 1) * window_samples] for i in range(full)]
    tail = mono[full * window_samples :]
    if tail.size and (full == 0 or tail.size >= min_tail_samples):
        rows.append(repeat_pad(tail, window_samples))
    if not rows:
        rows.append(np.zeros(window_samples, dtype=np.float32))
    return np.stack(rows).astype(np.float32, copy=False)
