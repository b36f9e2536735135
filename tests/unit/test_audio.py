"""Decoding: every unusable file is a PoisonMessage with its reason; usable ones become mono float32."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio import decode_audio
from services.errors import PoisonMessage
from tests.support.audio import encode, speechlike


def reason(data: bytes, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(PoisonMessage) as caught:
        decode_audio(data, max_seconds=kw.pop("max_seconds", 60), **kw)
    return caught.value.reason


@pytest.mark.parametrize(
    "fmt,subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("WAV", "FLOAT")]
)
def test_formats_decode_to_mono_float32(fmt, subtype):
    audio = decode_audio(encode(speechlike(1.5, 22050), 22050, fmt, subtype), max_seconds=60)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.sample_rate == 22050
    assert audio.duration_seconds == pytest.approx(1.5, abs=0.01)


def test_mp3_decodes():
    data = encode(speechlike(1.0, 16000), 16000, "MP3")
    assert decode_audio(data, max_seconds=60).duration_seconds == pytest.approx(1.0, abs=0.1)


def test_six_channels_are_mixed_down():
    audio = decode_audio(encode(speechlike(1.0, 48000, channels=6), 48000), max_seconds=60)
    assert audio.channels == 6 and audio.samples.ndim == 1


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 44100, 96000])
def test_sample_rates_from_8k_to_96k(rate):
    assert decode_audio(encode(speechlike(0.5, rate), rate), max_seconds=60).sample_rate == rate


def test_bad_inputs_have_reasons():
    wav = encode(speechlike(2.0))
    assert reason(b"") == "empty_audio"
    assert reason(b"this is not audio at all" * 10) == "undecodable_audio"
    assert reason(wav[:40]) == "undecodable_audio"
    assert reason(wav, max_seconds=1.0) == "too_long"
    assert reason(encode(np.zeros(16000, dtype=np.float32))) == "silent_audio"
    assert reason(encode(speechlike(0.05))) == "too_short"
    nan = speechlike(1.0)
    nan[100] = np.nan
    assert reason(encode(nan, subtype="FLOAT")) == "non_finite_samples"
    assert reason(encode(speechlike(0.5, 4000), 4000)) == "unsupported_sample_rate"
