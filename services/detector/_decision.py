"""The per-upload decision from window scores: torch-free, shared by the detector and the null scorer.

Rule (docs/model-card.md, "Decision rule"):

1. Speech first. With the per-window speech fractions of the VAD (services.detector._vad), an
   upload with less than `SpeechPolicy.min_speech_seconds` of speech is ``inconclusive``: reason
   ``not_speech`` when under `not_speech_fraction` of it is speech (silence, tones, noise, music),
   ``too_little_speech`` otherwise. The detector was trained on speech only; its score on
   anything else means nothing, so it never becomes a confident label.
2. The upload's score is the mean of its window scores, each weighted by its speech fraction
   (a window that is mostly music or silence says little); without speech fractions, the plain
   mean. It is ``inconclusive`` (reason ``near_threshold``) within `margin` of the threshold,
   otherwise ``synthetic`` at or above it and ``bona_fide`` below it.
3. Where: each window's (start, end, score, speech) is the timeline, and the span most likely
   synthetic is the run of consecutive speech windows with the largest total excess of score
   over the threshold (none when no speech window reaches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import Label, SpeechSummary, SyntheticSpan
from schemas import WindowScore as WindowScoreModel

__all__ = ["Decision", "SpeechPolicy", "Span", "WindowScore", "decide", "most_synthetic_span"]


@dataclass(frozen=True)
class SpeechPolicy:
    """How much speech an upload needs before the detector's score counts."""

    min_speech_seconds: float = 0.5
    not_speech_fraction: float = 0.1
    #: a window with less speech than this neither extends nor starts a synthetic span
    min_window_speech: float = 0.1


@dataclass(frozen=True)
class WindowScore:
    start_seconds: float
    end_seconds: float
    score: float
    speech: float | None


@dataclass(frozen=True)
class Span:
    start_seconds: float
    end_seconds: float
    score: float  # mean score of the span's windows
    windows: int


@dataclass(frozen=True)
class Decision:
    """One upload's verdict material."""

    score: float  # in [0, 1], higher = more likely synthetic
    label: Label
    threshold: float
    window_count: int
    mean: float
    minimum: float
    maximum: float
    fraction_over_threshold: float
    #: why an inconclusive label was given (not_speech, too_little_speech, near_threshold)
    reason: str | None = None
    speech_fraction: float | None = None
    speech_seconds: float | None = None
    timeline: tuple[WindowScore, ...] = ()
    synthetic_span: Span | None = None

    def verdict_fields(self) -> dict[str, Any]:
        """The Verdict 1.1 fields (reason, speech, timeline, synthetic_span) as schema models; the
        worker's verdict and `audioguard score --json` both use it, so both say the same thing."""
        fields: dict[str, Any] = {"reason": self.reason}
        if self.speech_fraction is not None and self.speech_seconds is not None:
            fields["speech"] = SpeechSummary(
                fraction=round(min(1.0, max(0.0, self.speech_fraction)), 4),
                seconds=round(max(0.0, self.speech_seconds), 3),
            )
        if self.timeline:
            fields["timeline"] = [
                WindowScoreModel(
                    start_seconds=w.start_seconds, end_seconds=w.end_seconds, score=w.score, speech=w.speech
                )
                for w in self.timeline
            ]
        if self.synthetic_span is not None:
            span = self.synthetic_span
            fields["synthetic_span"] = SyntheticSpan(
                start_seconds=span.start_seconds,
                end_seconds=span.end_seconds,
                score=span.score,
                windows=span.windows,
            )
        return fields


def _window_bounds(count: int, window_seconds: float, duration: float | None) -> list[tuple[float, float]]:
    bounds = []
    for i in range(count):
        start = i * window_seconds
        end = start + window_seconds
        if duration is not None:
            # the last window may be a repeat-padded tail: it ends where the audio does
            end = max(start, min(end, duration)) if i == count - 1 else end
        bounds.append((round(start, 3), round(end, 3)))
    return bounds


def most_synthetic_span(
    timeline: tuple[WindowScore, ...], threshold: float, min_window_speech: float = 0.1
) -> Span | None:
    """The consecutive windows with the largest sum of (score - threshold), counting only windows
    with speech; a window without enough speech adds nothing and is trimmed from the ends."""

    def speaks(w: WindowScore) -> bool:
        return w.speech is None or w.speech >= min_window_speech

    best: tuple[float, int, int] | None = None
    run_sum, run_start = 0.0, 0
    for i, w in enumerate(timeline):
        value = (w.score - threshold) if speaks(w) else 0.0
        if run_sum <= 0.0:
            run_sum, run_start = value, i
        else:
            run_sum += value
        if speaks(w) and value >= 0.0 and (best is None or run_sum > best[0]):
            best = (run_sum, run_start, i)
    if best is None:
        return None
    _, first, last = best
    while first < last and not speaks(timeline[first]):
        first += 1
    chosen = timeline[first : last + 1]
    return Span(
        start_seconds=chosen[0].start_seconds,
        end_seconds=chosen[-1].end_seconds,
        score=float(np.mean([w.score for w in chosen])),
        windows=len(chosen),
    )


def decide(
    window_scores: np.ndarray,
    threshold: float,
    margin: float,
    speech: np.ndarray | None = None,
    *,
    window_seconds: float | None = None,
    duration_seconds: float | None = None,
    policy: SpeechPolicy | None = None,
) -> Decision:
    """The decision of the module docstring. `speech` (per-window speech fraction, same length as
    the scores) turns on the speech check; `window_seconds` turns on the timeline and the span."""
    policy = policy or SpeechPolicy()
    scores = np.asarray(window_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("decide() needs at least one window score")
    plain_mean = float(scores.mean())
    fractions: np.ndarray | None = None
    if speech is not None:
        fractions = np.clip(np.asarray(speech, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if fractions.size != scores.size:
            raise ValueError(f"{fractions.size} speech fractions for {scores.size} window scores")

    bounds = _window_bounds(scores.size, window_seconds, duration_seconds) if window_seconds else None
    speech_fraction = speech_seconds = None
    reason: str | None = None
    score = plain_mean
    if fractions is not None:
        if bounds is not None:
            lengths = np.array([end - start for start, end in bounds])
        else:
            lengths = np.full(scores.size, window_seconds or 1.0)
        total = float(lengths.sum())
        speech_seconds = float((fractions * lengths).sum())
        speech_fraction = speech_seconds / total if total > 0 else 0.0
        if fractions.sum() > 0:
            score = float((scores * fractions).sum() / fractions.sum())
        if window_seconds is not None and speech_seconds < policy.min_speech_seconds:
            reason = "not_speech" if speech_fraction < policy.not_speech_fraction else "too_little_speech"
        elif window_seconds is None and speech_fraction < policy.not_speech_fraction:
            reason = "not_speech"

    label: Label
    if reason is not None:
        label = "inconclusive"
    elif abs(score - threshold) < margin:
        label, reason = "inconclusive", "near_threshold"
    elif score >= threshold:
        label = "synthetic"
    else:
        label = "bona_fide"

    timeline: tuple[WindowScore, ...] = ()
    span = None
    if bounds is not None:
        timeline = tuple(
            WindowScore(
                start_seconds=start,
                end_seconds=end,
                score=round(float(scores[i]), 6),
                speech=None if fractions is None else round(float(fractions[i]), 4),
            )
            for i, (start, end) in enumerate(bounds)
        )
        if reason not in ("not_speech", "too_little_speech"):
            span = most_synthetic_span(timeline, threshold, policy.min_window_speech)
    return Decision(
        score=score,
        label=label,
        threshold=float(threshold),
        window_count=int(scores.size),
        mean=plain_mean,
        minimum=float(scores.min()),
        maximum=float(scores.max()),
        fraction_over_threshold=float((scores >= threshold).mean()),
        reason=reason,
        speech_fraction=speech_fraction,
        speech_seconds=speech_seconds,
        timeline=timeline,
        synthetic_span=span,
    )
