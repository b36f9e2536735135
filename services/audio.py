"""Decoding uploaded audio bytes with soundfile (libsndfile: WAV, FLAC, OGG/Opus, MP3).

Returns mono float32 samples at the file's own rate; resampling to the model's rate and
windowing belong to the detector. Every way a file can be unusable becomes a
`PoisonMessage` with a stable reason code, checked before the expensive work where the
header allows (the duration limit is enforced from the header, before decoding).

Never imports torch (the detector is the only place that does).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from services.errors import PoisonMessage

__all__ = ["DecodedAudio", "decode_audio"]

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8
#: peak below this (about -100 dBFS) is digital silence: nothing to judge
SILENCE_PEAK = 1e-5


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, 1-D, mono
    sample_rate: int
    channels: int
    format: str

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(data: bytes, *, max_seconds: float, min_seconds: float = 0.1) -> DecodedAudio:
    """Decode `data`; raise PoisonMessage for anything that is not usable speech audio."""
    if not data:
        raise PoisonMessage("empty_audio", "the audio object has zero bytes")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise PoisonMessage("undecodable_audio", f"not a readable audio file: {exc}") from exc
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise PoisonMessage(
            "unsupported_sample_rate",
            f"sample rate {info.samplerate} Hz outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}",
        )
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise PoisonMessage("unsupported_channels", f"{info.channels} channels (at most {MAX_CHANNELS})")
    # Some formats (MP3 streams) report no frame count; the decoded length is checked below too.
    if info.frames > 0 and info.frames / info.samplerate > max_seconds:
        raise PoisonMessage(
            "too_long", f"{info.frames / info.samplerate:.1f}s of audio exceeds the {max_seconds:.0f}s limit"
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise PoisonMessage("undecodable_audio", f"audio stream is corrupt or truncated: {exc}") from exc
    if samples.size == 0:
        raise PoisonMessage("undecodable_audio", "the file holds no audio frames")
    if not np.isfinite(samples).all():
        raise PoisonMessage("non_finite_samples", "the audio contains NaN or infinite samples")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    duration = len(mono) / rate
    if duration > max_seconds:
        raise PoisonMessage("too_long", f"{duration:.1f}s of audio exceeds the {max_seconds:.0f}s limit")
    if duration < min_seconds:
        raise PoisonMessage("too_short", f"{duration:.3f}s of audio is below the {min_seconds}s minimum")
    if float(np.abs(mono).max()) < SILENCE_PEAK:
        raise PoisonMessage("silent_audio", "the audio is digital silence")
    return DecodedAudio(
        samples=np.ascontiguousarray(mono, dtype=np.float32),
        sample_rate=int(rate),
        channels=int(info.channels),
        format=str(info.format),
    )
