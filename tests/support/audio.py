"""Test audio made on the spot: voiced-speech-like signals and deliberately broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf


def speechlike(seconds: float = 2.0, rate: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A harmonic tone with a moving pitch and syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + seed)) ** 2
    signal = 0.2 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    signal = (signal / max(1e-6, np.abs(signal).max()) * 0.7).astype(np.float32)
    if channels > 1:
        signal = np.stack([signal] * channels, axis=1)
    return signal


def encode(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_clip(path: Path, seconds: float = 2.0, rate: int = 16000, seed: int = 0, fmt: str = "WAV") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(speechlike(seconds, rate, seed), rate, fmt))
    return path
