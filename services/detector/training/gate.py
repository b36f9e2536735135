"""The ship / no-ship gate: a candidate artifact against the champion on named evaluation sets.

Sets that exist without a data build (every slice is named `set/key=value`):

- `demo-clips`: services/demo_clips/labels.csv, sliced `all`, `generator=<family>` (the bona
  fide clips are `generator=human`) and `language=<code>`;
- `not-speech`: generated silence, near silence, a tone, white noise and a chord sequence
  (the speech check's cases): the right answer is `inconclusive`;
- `partial-spoof`: the `audioguard data partial-spoof` build rule on the demo clips (small,
  seeded): the right answer is `synthetic` for a spliced take and `bona_fide` for its twin;
- `test-split` (only when the data build's `data/detector/manifest.csv` exists): its `test`
  rows, sliced by generator, language, channel (the band: wideband, narrowband, g722), codec
  and duration bucket (`<4s`, `4-10s`, `>=10s`).

Named sets brought from outside (a tenant's long tail, `--set NAME=DIR`, `extra_set`): a
directory with `labels.csv` (columns `file` and `label`: bona_fide, synthetic or inconclusive;
every other column is a slice key) and the audio files it names, decoded by the worker's own
`services.audio.decode_audio` under the worker's default limits. Slices `NAME/all` and
`NAME/<column>=<value>`, judged by the same rule as the built-in sets.

Metric per slice: the **error rate** of the worker's decision (`Detector.score_samples`, the
speech check included): the share of clips whose label is not the right answer (an
inconclusive label on speech counts as an error). Error rates see calibration and threshold
damage that a rank metric (EER) cannot. Each slice gets a paired bootstrap (clips resampled
with replacement, the same draw for both models, fixed seed) of candidate - champion.

The rule: a slice **regresses** when the candidate's error rate exceeds the champion's by more
than `margin` *and* the lower end of the 95% bootstrap interval of that difference is above
`margin` too. The gate refuses when any slice regresses.

This module must never change a model or talk to the registry; it reads artifacts and clips.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Item",
    "SliceResult",
    "GateResult",
    "artifact_runtime",
    "evaluation_items",
    "extra_set",
    "run_gate",
    "score_items",
]

RATE = 16000
DEMO = Path(__file__).resolve().parents[2] / "demo_clips"
DATA = Path("data/detector")


@dataclass(frozen=True)
class Item:
    """One clip of an evaluation set: its audio, the right answer and the slices it belongs to."""

    set: str
    name: str
    truth: str  # bona_fide | synthetic | inconclusive
    slices: tuple[str, ...]
    samples: np.ndarray = field(repr=False, compare=False)
    rate: int = field(default=RATE, compare=False)


@dataclass(frozen=True)
class SliceResult:
    slice: str
    n: int
    candidate: float
    champion: float
    delta: float
    ci_low: float
    ci_high: float
    regressed: bool


@dataclass(frozen=True)
class GateResult:
    passed: bool
    margin: float
    seed: int
    bootstrap: int
    slices: tuple[SliceResult, ...]
    candidate_drift: dict[str, Any]
    champion_drift: dict[str, Any]
    runtimes: dict[str, str] = field(default_factory=dict)

    @property
    def regressed(self) -> list[SliceResult]:
        return [s for s in self.slices if s.regressed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "margin": self.margin,
            "seed": self.seed,
            "bootstrap": self.bootstrap,
            "rule": "refuse when candidate - champion error rate > margin and the 95% paired-bootstrap "
            "lower bound of that difference > margin",
            "slices": [asdict(s) for s in self.slices],
            "regressed": [s.slice for s in self.regressed],
            "runtimes": self.runtimes,
        }


# -- the sets ------------------------------------------------------------------------------------
def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * RATE)) / RATE


def _chords(seconds: float) -> np.ndarray:
    progression = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]
    t = _t(seconds)
    out = np.zeros_like(t)
    step = RATE // 2
    for i in range(len(t) // step):
        seg = slice(i * step, (i + 1) * step)
        local = t[seg] - t[seg][0]
        out[seg] = sum(
            np.sin(2 * np.pi * f * local) + 0.3 * np.sin(4 * np.pi * f * local) for f in progression[i % 4]
        )
        out[seg] *= 0.15 * np.exp(-3 * local)
    return out.astype(np.float32)


def _not_speech(seconds: float = 6.0) -> list[Item]:
    noise = np.random.default_rng(3).standard_normal(int(seconds * RATE))
    cases = {
        "digital-silence": np.zeros(int(seconds * RATE)),
        "near-silence": 1e-4 * noise,
        "tone-440hz": 0.5 * np.sin(2 * np.pi * 440 * _t(seconds)),
        "white-noise": 0.3 * noise,
        "chords": _chords(seconds),
    }
    return [
        Item("not-speech", name, "inconclusive", ("not-speech/all",), np.asarray(x, dtype=np.float32))
        for name, x in cases.items()
    ]


def _read(path: Path) -> np.ndarray:
    from .partial import _read as read_trimmed

    return read_trimmed(path)


def _demo_clips(directory: Path) -> list[Item]:
    with (directory / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    items = []
    for row in rows:
        truth = "bona_fide" if row["label"] == "bona_fide" else "synthetic"
        slices = (
            "demo-clips/all",
            f"demo-clips/generator={row['generator']}",
            f"demo-clips/language={row['language']}",
        )
        items.append(Item("demo-clips", row["file"], truth, slices, _read(directory / row["file"])))
    return items


def _test_split(data: Path) -> list[Item]:
    """The `test` rows of the data build's manifest.csv (training.data.MANIFEST_COLUMNS)."""
    with (data / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "test"]
    items = []
    for row in rows:
        truth = "bona_fide" if row["label"] == "bona_fide" else "synthetic"
        chain = (row.get("channel") or "").split()
        d = float(row.get("duration") or 0.0)
        slices = [
            "test-split/all",
            f"test-split/generator={row.get('generator', '')}",
            f"test-split/language={row.get('language', '')}",
            f"test-split/duration={'<4s' if d < 4 else '4-10s' if d < 10 else '>=10s'}",
        ]
        if chain:
            slices.append(f"test-split/channel={chain[0].split('@')[0]}")
            slices.append(f"test-split/codec={re.sub(r'q[0-9.]+$', '', chain[-1])}")
        items.append(Item("test-split", row["path"], truth, tuple(slices), _read(data / row["path"])))
    return items


BUILT_IN_SETS = frozenset({"demo-clips", "not-speech", "partial-spoof", "test-split"})
SET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TRUTHS = frozenset({"bona_fide", "synthetic", "inconclusive"})


def extra_set(name: str, directory: Path) -> list[Item]:
    """A named evaluation set from outside (e.g. a tenant's long tail): `directory/labels.csv`
    (`file`, `label`, any other columns as slice keys) and its audio. Raises FatalError
    ("bad_eval_set") naming the row for a bad name, label or file: a set that silently lost
    clips would pass a candidate on less evidence than it shows."""
    from services.audio import decode_audio
    from services.errors import AudioguardError, FatalError
    from services.settings import LimitsSettings

    if not SET_NAME.match(name) or name in BUILT_IN_SETS:
        raise FatalError(
            "bad_eval_set",
            f"set name {name!r}: lowercase letters, digits and '-', not one of {sorted(BUILT_IN_SETS)}",
        )
    labels = directory / "labels.csv"
    try:
        with labels.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise FatalError("bad_eval_set", f"{name}: cannot read {labels}: {exc}") from exc
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise FatalError("bad_eval_set", f"{name}: {labels} needs a file,label header and a row or more")
    limits = LimitsSettings()
    items = []
    for line, row in enumerate(rows, start=2):
        truth = (row.get("label") or "").strip()
        if truth not in TRUTHS:
            raise FatalError(
                "bad_eval_set", f"{name}: {labels}:{line}: label {truth!r} not in {sorted(TRUTHS)}"
            )
        try:
            audio = decode_audio(
                directory / row["file"],
                max_seconds=limits.max_audio_seconds,
                min_seconds=limits.min_audio_seconds,
            )
        except AudioguardError as exc:
            raise FatalError("bad_eval_set", f"{name}: {labels}:{line}: {row['file']}: {exc}") from exc
        keys = sorted(k for k in row if k not in ("file", "label") and k and (row[k] or "").strip())
        slices = (f"{name}/all", *(f"{name}/{k}={row[k].strip()}" for k in keys))
        items.append(Item(name, row["file"], truth, slices, audio.samples, audio.sample_rate))
    return items


def evaluation_items(
    partial_pairs: int = 4, seed: int = 17, data: Path | None = DATA, extra: dict[str, Path] | None = None
) -> list[Item]:
    """Every named set that exists here (the test split only when it has been built), and the
    `extra` sets (name -> directory, `extra_set`)."""
    from .partial import build_partial_spoof

    items = _demo_clips(DEMO)
    items += _not_speech()
    if partial_pairs > 0:
        for trial in build_partial_spoof(DEMO, pairs=partial_pairs, seed=seed):
            truth = "synthetic" if trial.label == "partial" else "bona_fide"
            slices = ("partial-spoof/all", f"partial-spoof/label={trial.label}")
            items.append(Item("partial-spoof", trial.name, truth, slices, trial.samples))
    if data is not None and (data / "manifest.csv").is_file():
        items += _test_split(data)
    for name, directory in (extra or {}).items():
        items += extra_set(name, directory)
    return items


# -- scoring and the rule --------------------------------------------------------------------------
_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[np.ndarray, np.ndarray]] = {}


def artifact_runtime(artifact: Path) -> str:
    """The runtime a candidate is judged with when none is named: "onnx" when the artifact
    carries an exported network (an fp32 export or a reduced-precision variant), else "torch"."""
    from .._artifact import ONNX_FILE

    return "onnx" if (artifact / ONNX_FILE).is_file() else "torch"


def _artifact_key(artifact: Path, runtime: str) -> str:
    from .._artifact import ONNX_FILE

    digest = hashlib.sha256(runtime.encode())
    parts = ["manifest.json", "weights.pt", *([ONNX_FILE] if runtime == "onnx" else [])]
    for part in parts:
        digest.update((artifact / part).read_bytes())
    return digest.hexdigest()


def score_items(artifact: Path, items: list[Item], runtime: str = "torch") -> tuple[np.ndarray, np.ndarray]:
    """(errors 0/1, upload scores) of `artifact` on `items` with `runtime` ("torch" or "onnx":
    the artifact's network.onnx); an identical artifact (same manifest, weights and, for onnx,
    network) scores the same items once per process."""
    key = (_artifact_key(artifact, runtime), tuple((item.set, item.name) for item in items))
    if key not in _CACHE:
        from services.detector import load_detector

        detector = load_detector(artifact, device="cpu", runtime="onnx" if runtime == "onnx" else "torch")
        errors, scores = [], []
        for item in items:
            decision = detector.score_samples(item.samples, item.rate)
            errors.append(decision.label != item.truth)
            scores.append(decision.score)
        _CACHE[key] = (np.array(errors, dtype=np.float64), np.array(scores, dtype=np.float64))
    return _CACHE[key]


def _paired_ci(cand: np.ndarray, champ: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float, float]:
    picks = rng.integers(0, cand.size, size=(n, cand.size))
    deltas = cand[picks].mean(axis=1) - champ[picks].mean(axis=1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def drift_reference(scores: np.ndarray, bins: int = 20, keep: int = 5000) -> dict[str, Any]:
    """A score histogram over the gate's speech sets and (at most `keep`, evenly taken) the
    scores themselves: the version's drift reference (small enough for an MLflow tag)."""
    histogram_of = scores
    if scores.size > keep:
        scores = np.sort(scores)[np.linspace(0, scores.size - 1, keep).round().astype(int)]
    counts, edges = np.histogram(np.clip(histogram_of, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return {
        "bins": edges.round(4).tolist(),
        "counts": counts.astype(int).tolist(),
        "n": int(histogram_of.size),
        "scores": [round(float(x), 5) for x in scores],
    }


def run_gate(
    candidate: Path,
    champion: Path,
    *,
    margin: float = 0.02,
    seed: int = 0,
    bootstrap: int = 1000,
    items: list[Item] | None = None,
    progress: Callable[[str], None] | None = None,
    candidate_runtime: str = "auto",
    champion_runtime: str = "auto",
) -> GateResult:
    """Score both artifacts on every set and apply the rule of the module docstring. A runtime
    "auto" is `artifact_runtime(artifact)`: a variant is judged as the worker would serve it."""
    items = items if items is not None else evaluation_items()
    say = progress or (lambda _: None)
    runtimes = {
        "candidate": artifact_runtime(candidate) if candidate_runtime == "auto" else candidate_runtime,
        "champion": artifact_runtime(champion) if champion_runtime == "auto" else champion_runtime,
    }
    say(f"scoring the candidate ({runtimes['candidate']}) on {len(items)} clips")
    cand_err, cand_scores = score_items(candidate, items, runtimes["candidate"])
    say(f"scoring the champion ({runtimes['champion']}) on {len(items)} clips")
    champ_err, champ_scores = score_items(champion, items, runtimes["champion"])
    rng = np.random.default_rng(seed)
    names = sorted({s for item in items for s in item.slices})
    results = []
    for name in names:
        idx = np.array([i for i, item in enumerate(items) if name in item.slices])
        c, h = cand_err[idx], champ_err[idx]
        delta = float(c.mean() - h.mean())
        low, high = _paired_ci(c, h, bootstrap, rng)
        results.append(
            SliceResult(name, int(idx.size), float(c.mean()), float(h.mean()), delta, low, high,
                        delta > margin and low > margin)
        )  # fmt: skip
    speech = np.array([item.set != "not-speech" for item in items])
    return GateResult(
        passed=not any(r.regressed for r in results),
        margin=margin,
        seed=seed,
        bootstrap=bootstrap,
        slices=tuple(results),
        candidate_drift=drift_reference(cand_scores[speech]),
        champion_drift=drift_reference(champ_scores[speech]),
        runtimes=runtimes,
    )
