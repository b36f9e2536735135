"""`audioguard data partial-spoof`: bona fide takes with one synthetic clip spliced in, and how
well the shipped detector finds (detection) and places (localisation) the synthetic part.

Build rule (seeded): a trial's host is every bona fide clip of one language, each trimmed of
silence, in a random order; the partial trial splices one synthetic clip (of the same language
when there is one) into the host at a sample position drawn uniformly over the host, and its
twin is the same host without it. Both go through the same channel chain (the data build's
`draw_chain` / `apply_chain`, one draw per pair), so the channel cannot tell them apart. The
composite is trimmed before the chain, so the chain's own trim leaves it alone and the spliced
span keeps its place (a transcode may shift it by its codec delay, tens of milliseconds).

Scoring goes through `Detector.score_samples`, the worker's decision with the speech check.
Detection: EER between partial trials and their bona fide twins on the upload score (the
speech-weighted mean) and on the maximum window score. Localisation: the verdict's
`synthetic_span` overlaps the spliced span (hit), its intersection over union, and the share
of windows whose label (score >= threshold) matches the truth (a window is synthetic when at
least half of it is spliced audio).

This module must never train or change a model; it reads clips, writes a set and a report.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .channel import RATE, apply_chain, draw_chain, read_mono, trim_silence
from .metrics import eer

__all__ = ["Trial", "build_partial_spoof", "evaluate_partial_spoof", "write_partial_spoof"]


@dataclass(frozen=True)
class Trial:
    name: str
    label: str  # "partial" | "bona_fide"
    language: str
    generator: str  # the spliced clip's generator; "human" for a twin
    span: tuple[float, float] | None  # seconds of spliced synthetic audio
    duration: float
    samples: np.ndarray


def _read(path: Path) -> np.ndarray:
    return trim_silence(read_mono(path)[0])


def build_partial_spoof(source: Path, pairs: int = 40, seed: int = 17) -> list[Trial]:
    """`pairs` (partial, bona fide twin) trials from the clips listed in `source/labels.csv`
    (columns file, label, generator, language; the format of services/demo_clips/)."""
    with (source / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    bona: dict[str, list[np.ndarray]] = {}
    synth: list[tuple[str, str, np.ndarray]] = []
    for row in rows:
        clip = _read(source / row["file"])
        if row["label"] == "bona_fide":
            bona.setdefault(row["language"], []).append(clip)
        else:
            synth.append((row["language"], row["generator"], clip))
    languages = sorted(lang for lang, clips in bona.items() if len(clips) >= 2)
    if not languages or not synth:
        raise ValueError(f"{source}: needs >= 2 bona fide clips of a language and >= 1 synthetic clip")
    rng = np.random.default_rng(seed)
    trials: list[Trial] = []
    for i in range(pairs):
        lang = languages[i % len(languages)]
        order = rng.permutation(len(bona[lang]))
        host = np.concatenate([bona[lang][j] for j in order])
        same = [s for s in synth if s[0] == lang] or synth
        _, generator, insert = same[int(rng.integers(len(same)))]
        at = int(rng.integers(0, host.size + 1))
        partial = np.concatenate([host[:at], insert, host[at:]])
        chain = draw_chain(rng, 0.1, 0.5)
        chain_seed = int(rng.integers(2**31))
        for label, audio in (("partial", partial), ("bona_fide", host)):
            trimmed = trim_silence(audio)
            offset = _offset(audio, trimmed)
            treated = apply_chain(trimmed, chain, np.random.default_rng(chain_seed), already_narrowband=False)
            span = None
            if label == "partial":
                start = max(0.0, (at - offset) / RATE)
                span = (round(start, 3), round(min(treated.size / RATE, start + insert.size / RATE), 3))
            trials.append(
                Trial(
                    name=f"{i:03d}-{label}-{lang}",
                    label=label,
                    language=lang,
                    generator=generator if label == "partial" else "human",
                    span=span,
                    duration=round(treated.size / RATE, 3),
                    samples=treated,
                )
            )
    return trials


def _offset(whole: np.ndarray, part: np.ndarray) -> int:
    """Where the view `part` (from trim_silence) starts inside `whole`, in samples."""
    if part.size == 0 or part.base is None:
        return 0
    return int((part.__array_interface__["data"][0] - whole.__array_interface__["data"][0]) // whole.itemsize)


def write_partial_spoof(trials: list[Trial], out: Path) -> Path:
    """FLAC files and `partial_spoof.csv` (name, label, language, generator, span, duration) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "partial_spoof.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "language", "generator", "span_start", "span_end", "duration"])
        for t in trials:
            sf.write(out / f"{t.name}.flac", t.samples, RATE)
            start, end = t.span if t.span else ("", "")
            writer.writerow([f"{t.name}.flac", t.label, t.language, t.generator, start, end, t.duration])
    return out / "partial_spoof.csv"


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def evaluate_partial_spoof(detector: Any, trials: list[Trial]) -> dict[str, Any]:
    """Detection EER and localisation accuracy of `detector` (services.detector.Detector) on `trials`."""
    rows = []
    for t in trials:
        d = detector.score_samples(t.samples, RATE)
        rows.append((t, d))
    pairs = [(t, d) for t, d in rows if d.reason not in ("not_speech", "too_little_speech")]
    score = {lab: np.array([d.score for t, d in pairs if t.label == lab]) for lab in ("partial", "bona_fide")}
    peak = {
        lab: np.array([d.maximum for t, d in pairs if t.label == lab]) for lab in ("partial", "bona_fide")
    }
    hits, ious, window_right, window_total = 0, [], 0, 0
    partial = [(t, d) for t, d in rows if t.label == "partial" and t.span is not None]
    for t, d in partial:
        assert t.span is not None
        span = d.synthetic_span
        if span is not None:
            got = (span.start_seconds, span.end_seconds)
            inter = _overlap(got, t.span)
            hits += inter > 0
            ious.append(inter / ((got[1] - got[0]) + (t.span[1] - t.span[0]) - inter))
        else:
            ious.append(0.0)
        for w in d.timeline:
            truth = _overlap((w.start_seconds, w.end_seconds), t.span) >= 0.5 * (
                w.end_seconds - w.start_seconds
            )
            window_right += truth == (w.score >= d.threshold)
            window_total += 1
    labels = [d.label for t, d in rows if t.label == "partial"]
    spliced = [t.span[1] - t.span[0] for t, _ in partial if t.span is not None]
    return {
        "trials": len(rows),
        "pairs": len(rows) // 2,
        "excluded_by_speech_check": len(rows) - len(pairs),
        "eer_upload_score": eer(score["bona_fide"], score["partial"])[0],
        "eer_max_window_score": eer(peak["bona_fide"], peak["partial"])[0],
        "partial_labelled_synthetic": labels.count("synthetic") / max(1, len(labels)),
        "bona_fide_labelled_synthetic": [d.label for t, d in rows if t.label == "bona_fide"].count(
            "synthetic"
        )
        / max(1, len(rows) - len(labels)),
        "span_hit_rate": hits / max(1, len(partial)),
        "span_mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "window_accuracy": window_right / max(1, window_total),
        "mean_duration_seconds": float(np.mean([t.duration for t in trials])),
        "mean_spliced_seconds": float(np.mean(spliced)) if spliced else 0.0,
    }


def run(source: Path, out: Path, pairs: int, seed: int, model: Path | None = None) -> dict[str, Any]:
    """Build, write and evaluate; the report goes to `out/report.json` and is returned."""
    from services.detector import load_detector

    trials = build_partial_spoof(source, pairs=pairs, seed=seed)
    write_partial_spoof(trials, out)
    detector = load_detector(model, device="cpu")
    report = evaluate_partial_spoof(detector, trials)
    report.update(
        {"source": str(source), "seed": seed, "model": f"{detector.meta.name}@{detector.meta.version}"}
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
