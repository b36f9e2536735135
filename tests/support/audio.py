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


def flac_claiming(seconds: float, rate: int = 16000, keep: int = 200) -> bytes:
    """A FLAC whose STREAMINFO claims `seconds` of audio but whose body is cut after `keep`
    bytes: only a decoder that trusts the header calls it too long; one that decodes it finds a
    truncated stream (so a `too_long` answer proves nothing was decoded)."""
    data = bytearray(encode(speechlike(1.0, rate), rate, "FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block is STREAMINFO
    # STREAMINFO starts at byte 8; bytes 10..17 of it end with the 36-bit total sample count
    packed = int.from_bytes(data[18:26], "big")
    total = int(seconds * rate)
    packed = (packed & ~((1 << 36) - 1)) | total
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data[:keep])


def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    return encode(samples.astype(np.float32), rate, subtype="FLOAT")


def with_nan(seconds: float = 1.0) -> bytes:
    samples = speechlike(seconds)
    samples[100:200] = np.nan
    return float_wav(samples)


#: bad uploads a user met, each with the reason the worker dead-letters it with
#: (under the default limits: 0.1 s .. 600 s)
BAD_UPLOADS: dict[str, tuple[str, bytes]] = {
    "claims-3-hours.flac": ("too_long", flac_claiming(3 * 3600)),
    "silence-3s.flac": ("silent_audio", encode(np.zeros(3 * 16000, dtype=np.float32), fmt="FLAC")),
    "10ms.wav": ("too_short", encode(speechlike(0.01))),
    "nan-samples.wav": ("non_finite_samples", with_nan(0.25)),
    "garbage.wav": ("undecodable_audio", bytes(range(256)) * 8),
    "empty.wav": ("empty_audio", b""),
}
