"""The one decode-and-validate path for audio: the worker, `audioguard score`, the bench and
the evaluation all turn bytes or a file into mono float32 samples here, under the same limits
and with the same reason codes.

Decoding is soundfile (libsndfile: WAV, FLAC, OGG/Opus, MP3) at the file's own rate, channels
mixed down to mono; resampling to the model's rate and windowing belong to the detector, which
imports torch. Every way a file can be unusable becomes a `PoisonMessage` whose reason is one
of `REASONS` and whose message is stable for the same input (no object addresses, no temporary
paths). What the header says is checked before anything is decoded, so a file that claims hours
of audio is refused at once, and the read is bounded by the header's own frame count.

Never imports torch (the detector is the only place that does), and never anything above the
services foundations.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Final

import numpy as np
import soundfile as sf

from services.errors import PoisonMessage
from services.settings import LimitsSettings

__all__ = ["REASONS", "DecodedAudio", "decode_audio", "decode_with_limits"]

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8
#: peak below this (about -100 dBFS) is digital silence: nothing to judge
SILENCE_PEAK = 1e-5
#: float files may hold mis-scaled exports (int16 or int32 ranges) and still score the same;
#: far beyond that the detector's power spectrum overflows float32 and its score turns to NaN
MAX_PEAK = float(2**31)
#: libsndfile's own normalisation of 16-bit PCM to float
_PCM16_SCALE = np.float32(1 / 32768)

#: every reason decode_audio can give; dashboards and the DLQ tool key on these
REASONS: Final = frozenset(
    {
        "missing_object",
        "empty_audio",
        "oversize",
        "undecodable_audio",
        "unsupported_sample_rate",
        "unsupported_channels",
        "too_long",
        "too_short",
        "non_finite_samples",
        "out_of_range_samples",
        "silent_audio",
    }
)

Source = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, 1-D, mono, finite
    sample_rate: int
    channels: int
    format: str

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_with_limits(
    source: Source, limits: LimitsSettings, *, max_bytes: int | None = None
) -> DecodedAudio:
    """`decode_audio` under the worker's limits (settings.limits; storage.max_bytes for files
    that did not come through storage, which bounds them itself)."""
    return decode_audio(
        source,
        max_seconds=limits.max_audio_seconds,
        min_seconds=limits.min_audio_seconds,
        max_bytes=max_bytes,
    )


def decode_audio(
    source: Source, *, max_seconds: float, min_seconds: float = 0.1, max_bytes: int | None = None
) -> DecodedAudio:
    """Decode `source` (the bytes of an audio file, or a path to one) to finite mono float32 of
    min_seconds..max_seconds. Raises PoisonMessage, reason in REASONS, for anything that is not
    usable audio; bad input raises nothing else."""
    size = _size(source)
    if size == 0:
        raise PoisonMessage("empty_audio", "the audio object has zero bytes")
    if max_bytes is not None and size > max_bytes:
        raise PoisonMessage("oversize", f"object of {size} bytes exceeds the {max_bytes}-byte limit")
    try:
        handle = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise PoisonMessage("undecodable_audio", f"not a readable audio file ({_why(exc)})") from exc
    with handle:
        rate, channels, frames, fmt = handle.samplerate, handle.channels, handle.frames, handle.format
        _check_header(rate, channels, frames, max_seconds=max_seconds, min_seconds=min_seconds)
        samples = _read(handle, frames)
    if samples.size == 0:
        raise PoisonMessage("undecodable_audio", "the file holds no audio frames")
    if not np.isfinite(samples).all():
        raise PoisonMessage("non_finite_samples", "the audio contains NaN or infinite samples")
    if float(np.abs(samples).max()) > MAX_PEAK:
        raise PoisonMessage("out_of_range_samples", f"sample magnitudes beyond {MAX_PEAK:.0f}: not audio")
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
        channels=int(channels),
        format=str(fmt),
    )


def _size(source: Source) -> int:
    if isinstance(source, bytes):
        return len(source)
    try:
        status = os.stat(source)
    except FileNotFoundError as exc:
        raise PoisonMessage("missing_object", "no such file") from exc
    except OSError as exc:
        raise PoisonMessage("missing_object", "file is not readable") from exc
    if not os.path.isfile(source):
        raise PoisonMessage("missing_object", "path is not a regular file")
    return status.st_size


def _check_header(rate: int, channels: int, frames: int, *, max_seconds: float, min_seconds: float) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise PoisonMessage(
            "unsupported_sample_rate", f"sample rate {rate} Hz outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise PoisonMessage("unsupported_channels", f"{channels} channels (at most {MAX_CHANNELS})")
    # Refused on the header's word alone: nothing is decoded. A file with no frames is left to
    # the decoded checks (it is undecodable, not short).
    claimed = frames / rate
    if claimed > max_seconds:
        raise PoisonMessage("too_long", f"{claimed:.1f}s of audio exceeds the {max_seconds:.0f}s limit")
    if 0 < claimed < min_seconds:
        raise PoisonMessage("too_short", f"{claimed:.3f}s of audio is below the {min_seconds}s minimum")


def _read(handle: sf.SoundFile, frames: int) -> np.ndarray:
    """The header's frame count at most, as (frames, channels) float32, in one read from the
    start, exactly as `soundfile.read` does it: soundfile seeks after every read and libsndfile's
    MP3 decoder restarts on a seek, so reading block by block changes MP3 samples."""
    try:
        handle.seek(0)
        samples: np.ndarray
        if handle.subtype == "PCM_16":
            # libsndfile turns 16-bit samples into floats one at a time: ~0.4 ms of a 12 s clip's
            # ~0.5 ms decode. Its scale is exactly 1/32768, a power of two, so int16 times it in
            # numpy gives the same float32 values, bit for bit (tests/unit/test_audio_pcm16.py)
            samples = handle.read(frames, dtype="int16", always_2d=True).astype(np.float32)
            samples *= _PCM16_SCALE
        else:
            samples = handle.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        why = _why(exc)
        raise PoisonMessage("undecodable_audio", f"audio stream is corrupt or truncated ({why})") from exc
    return samples


def _why(exc: BaseException) -> str:
    # libsndfile's own sentence ("Format not recognised.") and not str(exc), which names the
    # Python object or temporary path it was opening
    if isinstance(exc, sf.LibsndfileError):
        return exc.error_string.rstrip(".") or "libsndfile error"
    return type(exc).__name__
