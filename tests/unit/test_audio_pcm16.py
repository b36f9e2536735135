"""16-bit PCM is decoded as int16 and scaled in numpy (services.audio._read): the same float32
samples libsndfile's own float conversion gives, bit for bit, in every container it reads
16-bit PCM from, with the extremes and several channels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from services.audio import decode_audio


@pytest.mark.parametrize("container", ["WAV", "FLAC", "AIFF", "W64", "CAF"])
@pytest.mark.parametrize("channels", [1, 2])
def test_pcm16_decodes_to_libsndfiles_own_floats(container: str, channels: int):
    rng = np.random.default_rng(channels)
    pcm = rng.integers(-32768, 32768, size=(16000, channels), dtype=np.int16)
    pcm[:2, 0] = (-32768, 32767)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, 16000, format=container, subtype="PCM_16")
    data = buffer.getvalue()
    with sf.SoundFile(io.BytesIO(data)) as handle:
        assert handle.subtype == "PCM_16"
        reference = handle.read(dtype="float32", always_2d=True)
    expected = reference.mean(axis=1, dtype=np.float32) if channels > 1 else reference[:, 0]
    decoded = decode_audio(data, max_seconds=60.0)
    assert decoded.samples.dtype == np.float32
    assert np.array_equal(decoded.samples, expected)


def test_other_subtypes_still_use_libsndfiles_conversion():
    samples = (0.25 * np.sin(np.linspace(0, 200, 16000))).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV", subtype="PCM_24")
    decoded = decode_audio(buffer.getvalue(), max_seconds=60.0)
    assert np.array_equal(decoded.samples, sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")[0])
