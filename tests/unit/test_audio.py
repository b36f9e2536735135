"""Decoding: every unusable file is a PoisonMessage with its reason; usable ones become mono float32."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audio import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    REASONS,
    decode_audio,
    decode_with_limits,
)
from services.errors import PoisonMessage
from services.settings import LimitsSettings
from tests.support.audio import BAD_UPLOADS, encode, flac_claiming, float_wav, speechlike


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


# -- the uploads a user met: one answer whichever door they come through ---------------------
@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_get_the_workers_reason_from_bytes_and_from_a_path(name, tmp_path):
    want, data = BAD_UPLOADS[name]
    path = tmp_path / name
    path.write_bytes(data)
    limits = LimitsSettings()
    for source in (data, path):
        with pytest.raises(PoisonMessage) as caught:
            decode_with_limits(source, limits)
        assert caught.value.reason == want, source
        assert str(tmp_path) not in caught.value.message and "0x" not in caught.value.message


def test_a_header_claiming_hours_is_refused_without_decoding():
    data = flac_claiming(3 * 3600)
    assert reason(data, max_seconds=600) == "too_long"
    # the body was cut after 200 bytes: had it been decoded, the answer would have been this
    assert reason(data, max_seconds=4 * 3600) == "undecodable_audio"
    assert reason(flac_claiming(0.05, keep=10_000), max_seconds=600) == "too_short"


def test_finite_samples_too_large_to_score_are_refused():
    big = speechlike(1.0) * np.float32(1e20)
    assert reason(float_wav(big)) == "out_of_range_samples"
    # a float export left at int16 scale is still audio
    assert decode_audio(float_wav(speechlike(1.0) * np.float32(32767)), max_seconds=60).samples.size


def test_files_that_are_not_there_or_too_big(tmp_path):
    with pytest.raises(PoisonMessage) as missing:
        decode_audio(tmp_path / "nope.wav", max_seconds=60)
    with pytest.raises(PoisonMessage) as folder:
        decode_audio(tmp_path, max_seconds=60)
    big = tmp_path / "big.wav"
    big.write_bytes(encode(speechlike(2.0)))
    with pytest.raises(PoisonMessage) as oversize:
        decode_audio(big, max_seconds=60, max_bytes=1000)
    assert [missing.value.reason, folder.value.reason, oversize.value.reason] == [
        "missing_object",
        "missing_object",
        "oversize",
    ]


def test_messages_are_the_same_every_time():
    # str() of soundfile's error names the BytesIO object by address; the message must not
    garbage = b"this is not audio at all" * 10
    messages = set()
    for _ in range(3):
        with pytest.raises(PoisonMessage) as caught:
            decode_audio(bytes(bytearray(garbage)), max_seconds=60)
        messages.add(caught.value.message)
    assert len(messages) == 1 and "0x" not in messages.pop()


def test_a_path_decodes_exactly_like_its_bytes(tmp_path):
    for fmt, subtype in (("FLAC", None), ("MP3", None), ("OGG", "VORBIS")):
        data = encode(speechlike(1.2, 22050, channels=2), 22050, fmt, subtype)
        path = tmp_path / f"clip.{fmt.lower()}"
        path.write_bytes(data)
        from_bytes = decode_audio(data, max_seconds=60)
        from_path = decode_audio(path, max_seconds=60)
        assert np.array_equal(from_bytes.samples, from_path.samples)
        # and exactly like soundfile's own read, which the detector's scores were measured on
        reference, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        assert np.array_equal(from_bytes.samples, reference.mean(axis=1, dtype=np.float32))


# -- property-based: whatever the bytes, a usable clip or a known reason ---------------------
LIMIT_SECONDS, MIN_SECONDS = 30.0, 0.1


def check_outcome(data: bytes) -> str:
    """Decode `data`; return "ok" or the reason, failing on anything else."""
    try:
        audio = decode_audio(data, max_seconds=LIMIT_SECONDS, min_seconds=MIN_SECONDS)
    except PoisonMessage as exc:
        assert exc.reason in REASONS, exc.reason
        assert "0x" not in exc.message and "BytesIO" not in exc.message, exc.message
        return exc.reason
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert np.isfinite(audio.samples).all()
    assert MIN_SECONDS <= audio.duration_seconds <= LIMIT_SECONDS
    assert MIN_SAMPLE_RATE <= audio.sample_rate <= MAX_SAMPLE_RATE
    assert 1 <= audio.channels <= MAX_CHANNELS
    return "ok"


SEEDS = {
    "wav16": encode(speechlike(0.3, 16000), 16000),
    "wav-float-stereo": encode(speechlike(0.3, 22050, channels=2), 22050, subtype="FLOAT"),
    "flac": encode(speechlike(0.3, 16000), 16000, "FLAC"),
    "flac-stereo": encode(speechlike(0.3, 44100, channels=2), 44100, "FLAC"),
}
EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated_header(draw: st.DrawFn) -> bytes:
    """A real WAV or FLAC with its header (first 96 bytes) damaged: bytes overwritten, a little-
    or big-endian field set to an extreme value, bytes cut out or inserted, the tail cut off."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "field", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, min(95, len(data) - 1)))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "field":
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(EXTREMES)) & ((1 << (8 * width)) - 1)
            data[at : at + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[draw(st.integers(0, len(data))) :]
        if not data:
            break
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_with_a_known_reason(data):
    check_outcome(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SEEDS)).map(SEEDS.get), st.binary(min_size=1, max_size=64))
def test_a_real_header_with_random_bytes_after_it(seed, tail):
    # what libsndfile will parse as a header, followed by nonsense or nothing useful
    header = 44 if seed[:4] == b"RIFF" else 42
    check_outcome(seed[:header] + tail)


@settings(max_examples=400, deadline=None)
@given(mutated_header())
def test_damaged_headers_decode_cleanly_or_are_refused(data):
    check_outcome(data)


# -- the fuzz corpus: inputs worth keeping, named <expected>__<what>.<ext> ------------------
CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "audio"


def test_the_fuzz_corpus_is_there():
    assert len(list(CORPUS.glob("*__*"))) >= 10


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*__*")), ids=lambda p: p.name)
def test_fuzz_corpus_replays(path):
    expected = path.name.split("__", 1)[0]
    assert expected == "ok" or expected in REASONS
    assert check_outcome(path.read_bytes()) == expected
