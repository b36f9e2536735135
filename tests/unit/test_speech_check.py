"""Not speech, not a verdict: the VAD of the detector runtime and the decision rule around it.

Silence, a tone, white noise and a music-like chord sequence are inconclusive (not_speech) with
the shipped model, however confident its raw score; the demo clips (real speech) keep verdicts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from schemas import VERDICT_SCHEMA_VERSION
from services.detector import Detector, load_detector
from services.detector._decision import SpeechPolicy, WindowScore, decide, most_synthetic_span
from services.detector._vad import SILERO_SHA256, load_speech_detector
from services.platform import arrival_for
from tests.support.audio import encode
from tests.support.memory import Uploads, build_memory_worker, drive, memory_settings, records

RATE = 16000
TENANT = "acme"  # the tenant of the broker fixture (tests/unit/conftest.py)
DEMO = Path(__file__).resolve().parents[2] / "services" / "demo_clips"


@pytest.fixture(scope="module")
def det() -> Detector:
    return load_detector(device="cpu", threads=1)


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * RATE)) / RATE


def tone(seconds: float = 6.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * _t(seconds))).astype(np.float32)


def white_noise(seconds: float = 6.0, level: float = 0.3) -> np.ndarray:
    return (level * np.random.default_rng(3).standard_normal(int(seconds * RATE))).astype(np.float32)


def chords(seconds: float = 6.0) -> np.ndarray:
    """Plucked triads (C, Am, F, G), two a second, with their octaves: music-like, no voice."""
    progression = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]
    t = _t(seconds)
    out = np.zeros_like(t)
    step = RATE // 2
    for i in range(len(t) // step):
        seg = slice(i * step, (i + 1) * step)
        local = t[seg] - t[seg][0]
        notes = progression[i % len(progression)]
        out[seg] = sum(np.sin(2 * np.pi * f * local) + 0.3 * np.sin(4 * np.pi * f * local) for f in notes)
        out[seg] *= 0.15 * np.exp(-3 * local)
    return out.astype(np.float32)


NOT_SPEECH = {
    "digital silence": lambda: np.zeros(6 * RATE, dtype=np.float32),
    "near silence (-80 dBFS noise)": lambda: white_noise(level=1e-4),
    "440 Hz tone": tone,
    "white noise": white_noise,
    "chord sequence": chords,
}


def demo_clips() -> list[tuple[Path, str]]:
    with (DEMO / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [(DEMO / row["file"], row["label"]) for row in rows]


def test_the_vad_weights_come_from_the_wheel_and_are_checked() -> None:
    vad = load_speech_detector(RATE)
    assert len(SILERO_SHA256) == 64
    windows = np.stack([tone(4.0), np.zeros(4 * RATE, dtype=np.float32)])
    probs = vad.frame_probabilities(windows)
    assert probs.shape == (2, 125) and np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("kind", sorted(NOT_SPEECH))
def test_audio_that_is_not_speech_is_inconclusive(det: Detector, kind: str) -> None:
    samples = NOT_SPEECH[kind]()
    decision = det.score_samples(samples, RATE)
    assert decision.label == "inconclusive", (kind, decision)
    assert decision.reason == "not_speech"
    assert decision.speech_fraction is not None and decision.speech_fraction < 0.1
    assert decision.synthetic_span is None


def test_a_confident_raw_score_on_a_tone_no_longer_becomes_a_label(det: Detector) -> None:
    windows = det.windows(tone(), RATE)
    raw = det.decide(det.score_windows(windows))  # no speech fractions: the old rule
    assert raw.label != "inconclusive", "the tone must be a case the old rule got confidently wrong"
    assert det.decide(det.score_windows(windows), det.speech(windows), 6.0).reason == "not_speech"


def test_the_demo_clips_are_speech_and_keep_their_verdicts(det: Detector) -> None:
    clips = demo_clips()
    assert len(clips) >= 20
    confident = 0
    for path, _label in clips:
        samples, rate = sf.read(path, dtype="float32")
        decision = det.score_samples(samples, rate)
        duration = len(samples) / rate
        assert decision.speech_fraction is not None and decision.speech_fraction > 0.3, path.name
        if duration >= 1.5:
            assert decision.reason not in {"not_speech", "too_little_speech"}, (path.name, decision)
        confident += decision.label != "inconclusive"
    assert confident >= len(clips) - 3


def test_a_short_burst_of_speech_is_too_little_speech(det: Detector) -> None:
    samples, rate = sf.read(next(p for p, _ in demo_clips() if sf.info(p).duration >= 2.0), dtype="float32")
    burst = np.concatenate([samples[: int(0.3 * rate)], np.zeros(int(5 * rate), dtype=np.float32)])
    decision = det.score_samples(burst, rate)
    assert decision.label == "inconclusive" and decision.reason in {"too_little_speech", "not_speech"}


# -- the rule itself, on numbers ----------------------------------------------------------
def test_speech_weighted_score_and_reasons() -> None:
    scores = np.array([0.9, 0.1, 0.1], dtype=np.float32)
    # only the first window speaks: its score is the upload's
    d = decide(scores, 0.5, 0.05, np.array([1.0, 0.0, 0.0]), window_seconds=4.0, duration_seconds=12.0)
    assert d.label == "synthetic" and d.reason is None and d.score == pytest.approx(0.9)
    assert d.speech_seconds == pytest.approx(4.0) and d.speech_fraction == pytest.approx(1 / 3)
    assert d.mean == pytest.approx(float(scores.mean()))
    few = decide(scores, 0.5, 0.05, np.array([0.4, 0.0, 0.0]), window_seconds=1.0, duration_seconds=3.0)
    assert (few.label, few.reason) == ("inconclusive", "too_little_speech")  # 0.4 s, 13 % of 3 s
    none = decide(scores, 0.5, 0.05, np.zeros(3), window_seconds=4.0, duration_seconds=12.0)
    assert (none.label, none.reason) == ("inconclusive", "not_speech")
    near = decide(np.array([0.52]), 0.5, 0.05, np.ones(1), window_seconds=4.0, duration_seconds=4.0)
    assert (near.label, near.reason) == ("inconclusive", "near_threshold")
    policy = SpeechPolicy(min_speech_seconds=20)
    strict = decide(scores, 0.5, 0.05, np.ones(3), window_seconds=4.0, policy=policy)
    assert strict.reason == "too_little_speech"
    with pytest.raises(ValueError):
        decide(scores, 0.5, 0.05, np.ones(2))


def test_without_speech_fractions_the_rule_is_the_old_one() -> None:
    d = decide(np.array([0.9, 0.8]), 0.5, 0.05)
    assert (d.label, d.reason, d.speech_fraction, d.timeline) == ("synthetic", None, None, ())


def test_timeline_bounds_end_where_the_audio_does() -> None:
    d = decide(np.array([0.1, 0.2, 0.3]), 0.5, 0.05, window_seconds=4.0, duration_seconds=9.5)
    assert [(w.start_seconds, w.end_seconds) for w in d.timeline] == [(0.0, 4.0), (4.0, 8.0), (8.0, 9.5)]
    assert [w.score for w in d.timeline] == pytest.approx([0.1, 0.2, 0.3])


def _timeline(scores: list[float], speech: list[float] | None = None) -> tuple[WindowScore, ...]:
    sp = speech or [1.0] * len(scores)
    return tuple(WindowScore(4.0 * i, 4.0 * (i + 1), s, sp[i]) for i, s in enumerate(scores))


def test_the_most_synthetic_span_is_the_largest_excess_over_the_threshold() -> None:
    span = most_synthetic_span(_timeline([0.1, 0.9, 0.8, 0.0, 0.95, 0.1]), 0.5)
    assert span is not None and (span.start_seconds, span.end_seconds, span.windows) == (4.0, 12.0, 2)
    assert span.score == pytest.approx(0.85)
    # a dip barely below the threshold between two strong runs joins them
    joined = most_synthetic_span(_timeline([0.9, 0.45, 0.9]), 0.5)
    assert joined is not None and joined.windows == 3
    # a silent window inside a run neither breaks nor starts it; at the edge it is trimmed
    quiet = most_synthetic_span(_timeline([0.99, 0.9, 0.99], [0.0, 1.0, 1.0]), 0.5)
    assert quiet is not None and (quiet.start_seconds, quiet.windows) == (4.0, 2)
    assert most_synthetic_span(_timeline([0.1, 0.2]), 0.5) is None


# -- through the worker -------------------------------------------------------------------
def test_the_worker_says_not_speech_and_where_the_synthetic_part_is(
    broker: Any, tmp_path: Path, det: Detector
) -> None:
    name, memory = broker
    uploads = Uploads(memory, tmp_path)
    clip = DEMO / "16-synthetic-espeak-ng-cs.flac"
    keys = {}
    for content_id, data in (("tone", encode(tone())), ("speech", clip.read_bytes())):
        uri, data = uploads.clip(TENANT, f"{content_id}.audio", data=data)
        keys[content_id] = f"{TENANT}:{content_id}"
        uploads.raw(TENANT, arrival_for(TENANT, uri, data, key=keys[content_id], content_id=content_id))
    worker = build_memory_worker(memory_settings(name, [TENANT], tmp_path), memory, det)
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 2, timeout=60.0)
    finally:
        worker.shutdown()
    published = [json.loads(v) for _k, v, _h in records(memory, "verdicts", TENANT)]
    verdicts = {v["content_id"]: v for v in published}
    tone_verdict, speech_verdict = verdicts["tone"], verdicts["speech"]
    assert tone_verdict["schema_version"] == VERDICT_SCHEMA_VERSION
    assert (tone_verdict["label"], tone_verdict["reason"]) == ("inconclusive", "not_speech")
    assert tone_verdict["speech"]["fraction"] < 0.1 and tone_verdict["synthetic_span"] is None
    bounds = [(w["start_seconds"], w["end_seconds"]) for w in tone_verdict["timeline"]]
    assert bounds == [(0.0, 4.0), (4.0, 6.0)]
    # the worker and `audioguard score` take the same decision on the same audio
    samples, rate = sf.read(clip, dtype="float32")
    direct = det.score_samples(samples, rate)
    assert speech_verdict["label"] == direct.label == "synthetic" and speech_verdict["reason"] is None
    assert speech_verdict["score"] == pytest.approx(direct.score, abs=1e-6)
    span = speech_verdict["synthetic_span"]
    assert (
        span is not None
        and span["start_seconds"] == 0.0
        and span["end_seconds"] == pytest.approx(len(samples) / rate, abs=0.01)
    )


def test_the_batched_vad_equals_the_frame_by_frame_core() -> None:
    """SpeechDetector runs the frames in one batch; the core called frame by frame with its state
    carried (how the silero wrapper runs) must give the same probabilities."""
    import torch

    vad = load_speech_detector(RATE)
    samples, rate = sf.read(DEMO / "16-synthetic-espeak-ng-cs.flac", dtype="float32")
    windows = np.stack([np.resize(samples, 4 * RATE), white_noise(4.0), tone(4.0)]).astype(np.float32)
    windows = np.clip(windows, -1.0, 1.0)  # what the VAD does to its input
    core = vad._core
    x = torch.from_numpy(windows)
    state, context, out = torch.zeros(2, 3, 128), torch.zeros(3, 64), []
    with torch.inference_mode():
        for i in range(0, windows.shape[1], 512):
            chunk = torch.cat([context, x[:, i : i + 512]], dim=1)
            prob, state = core(chunk, state)
            context = chunk[:, -64:]
            out.append(prob)
    expected = torch.cat(out, dim=1).numpy()
    np.testing.assert_allclose(vad.frame_probabilities(windows), expected, atol=1e-5)
