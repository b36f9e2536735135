"""Reading audio files for the `score` command and the data build: WAV, FLAC, OGG (Vorbis/Opus)
and MP3 through libsndfile, any rate and channel count, returned as mono float32.

This module must never resample or decide anything; the worker's own decoding lives in the
storage service, this is only for files named on the command line and for the offline build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


class UnreadableAudio(Exception):
    """The file could not be decoded as audio."""


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as exc:
        raise UnreadableAudio(f"{path}: {exc}") from exc
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)
