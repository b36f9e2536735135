"""`audioguard eval`: how good the shipped detector is, and whether it learnt a shortcut.

Reports, on the test split (speakers and generators the model never saw, plus reserved
generators), EER and miss rate at 1 % false alarm with stratified bootstrap 95 % intervals:
pooled, per generator, per language, seen vs unseen generators, on whole clips (the runtime
rule) and on 1 s / 2 s / 4 s chunks (the first N seconds of clips at least that long). Beside it
always runs the shortcut probe (services.detector.training.probe) trained on the train split, and a
label-shuffled probe; `--shuffle-check` also trains a label-shuffled network briefly. Also the
expected calibration error of the clip scores (pooled, seen and unseen generators). Writes
report.json, report.md, det.png and reliability.png to the output folder, and measures scoring
cost per 4 s window at batch 1 and 64 (float, int8 dynamic quantisation, TorchScript).

This module must never tune anything: thresholds come from the artifact (dev split).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.settings import LimitsSettings

from .._runtime import Detector, load_detector
from .metrics import bootstrap_ci, det_points, eer, expected_calibration_error, miss_at_fa, reliability
from .probe import ShortcutProbe, feature_matrix
from .train import Clip, load_clips

CHUNKS = (1.0, 2.0, 4.0)
#: equal-width score bins of the calibration error and the reliability plot
CALIBRATION_BINS = 10


def _log(msg: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def eer_metrics(bona: np.ndarray, synth: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, Any]:
    e, _ = eer(bona, synth)
    m, _ = miss_at_fa(bona, synth, 0.01)
    return {
        "n_bona_fide": int(bona.size),
        "n_synthetic": int(synth.size),
        "eer": e,
        "eer_ci95": bootstrap_ci(bona, synth, lambda b, s: eer(b, s)[0], n_boot, seed),
        "miss_at_1pct_fa": m,
        "miss_at_1pct_fa_ci95": bootstrap_ci(
            bona, synth, lambda b, s: miss_at_fa(b, s, 0.01)[0], n_boot, seed
        ),
    }


def score_clips(det: Detector, audios: list[np.ndarray]) -> np.ndarray:
    """Runtime rule per clip: windows -> calibrated window scores -> mean."""
    windows = [det.windows(a, 16000) for a in audios]
    flat = np.concatenate(windows)
    scores = np.concatenate([det.score_windows(flat[i : i + 64]) for i in range(0, len(flat), 64)])
    bounds = np.cumsum([0] + [len(w) for w in windows])
    return np.array([float(scores[bounds[i] : bounds[i + 1]].mean()) for i in range(len(audios))])


def breakdown(
    scores: np.ndarray, clips: list[Clip], seen: set[str], n_boot: int
) -> dict[str, dict[str, Any]]:
    labels = np.array([c.label for c in clips])
    gens = np.array([c.row["generator"] for c in clips])
    langs = np.array([c.row["language"] for c in clips])
    bona = scores[labels == 0]
    out: dict[str, dict[str, Any]] = {"pooled": eer_metrics(bona, scores[labels == 1], n_boot)}
    synth_gens = sorted(set(gens[labels == 1]))
    seen_mask = (labels == 1) & np.isin(gens, sorted(seen))
    unseen_mask = (labels == 1) & ~np.isin(gens, sorted(seen))
    out["seen_generators"] = eer_metrics(bona, scores[seen_mask], n_boot)
    out["unseen_generators"] = eer_metrics(bona, scores[unseen_mask], n_boot)
    for g in synth_gens:
        out[f"generator:{g}"] = eer_metrics(bona, scores[(labels == 1) & (gens == g)], n_boot)
    for lang in sorted(set(langs)):
        m = langs == lang
        out[f"language:{lang}"] = eer_metrics(scores[m & (labels == 0)], scores[m & (labels == 1)], n_boot)
    return out


def calibration(scores: np.ndarray, clips: list[Clip], seen: set[str]) -> dict[str, dict[str, Any]]:
    """Expected calibration error of the clip scores as P(synthetic): all test clips, and the
    bona fide clips with the seen / the unseen generators' synthetic clips."""
    labels = np.array([c.label for c in clips])
    synth_seen = (labels == 1) & _mask(clips, seen, True)
    groups = {
        "pooled": np.ones(labels.size, bool),
        "seen_generators": (labels == 0) | synth_seen,
        "unseen_generators": (labels == 0) | ((labels == 1) & ~synth_seen),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, keep in groups.items():
        _, mean_score, share, count = reliability(scores[keep], labels[keep], CALIBRATION_BINS)
        out[name] = {
            "ece": expected_calibration_error(scores[keep], labels[keep], CALIBRATION_BINS),
            "n": int(keep.sum()),
            "bins": [
                {"mean_score": float(m), "share_synthetic": float(f), "n": int(n)}
                for m, f, n in zip(mean_score, share, count, strict=True)
            ],
        }
    return out


def _reliability_plot(path: Path, table: dict[str, dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="perfectly calibrated")
    for name, entry in table.items():
        used = [b for b in entry["bins"] if b["n"] > 0]
        ax.plot(
            [b["mean_score"] for b in used],
            [b["share_synthetic"] for b in used],
            marker="o",
            label=f"{name.replace('_', ' ')} (ECE {entry['ece']:.3f}, n={entry['n']})",
        )
    ax.set_xlabel("mean score in bin (the model's P(synthetic))")
    ax.set_ylabel("share of the bin's clips that are synthetic")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    save_figure(fig, ax, path, title, legend="upper left")


def save_figure(fig: Any, ax: Any, path: Path, title: str, *, legend: str, grid: str = "both") -> None:
    """Title, dotted grid, small legend, written as a PNG and closed: every report plot ends so."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(True, axis=grid, linestyle=":")
    ax.legend(fontsize=8, loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _det_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    ticks = [0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]
    fig, ax = plt.subplots(figsize=(7, 7))
    for name, (fa, miss) in curves.items():
        fa_c = np.clip(fa, 1e-4, 1 - 1e-4)
        miss_c = np.clip(miss, 1e-4, 1 - 1e-4)
        ax.plot(norm.ppf(fa_c), norm.ppf(miss_c), label=name, linewidth=1.5)
    ax.plot(norm.ppf([1e-3, 0.9]), norm.ppf([1e-3, 0.9]), "k:", linewidth=0.8, label="EER line")
    ax.set_xticks(norm.ppf(ticks), [f"{t:.1%}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:.1%}" for t in ticks])
    ax.set_xlim(norm.ppf(5e-4), norm.ppf(0.9))
    ax.set_ylim(norm.ppf(5e-4), norm.ppf(0.9))
    ax.set_xlabel("false alarm rate (bona fide flagged)")
    ax.set_ylabel("miss rate (synthetic passed)")
    save_figure(fig, ax, path, title, legend="upper right")


def benchmark(det: Detector, threads: int, repeats: int = 5) -> dict[str, Any]:
    """Milliseconds per 4 s window at batch 1 and batch 64: the eager float module, int8 dynamic
    quantised, and the TorchScript trace the runtime scores with."""
    torch.set_num_threads(threads)
    net = det._net
    rng = np.random.default_rng(0)
    variants: dict[str, Any] = {"float32": net}
    variants["int8_dynamic"] = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        net, {torch.nn.Linear}, dtype=torch.qint8
    )
    # the runtime's own trace, so this row measures exactly what the worker runs
    variants["torchscript"] = det._forward
    results: dict[str, Any] = {"threads": threads, "device": det.device}
    for name, model in variants.items():
        for batch in (1, 64):
            x = torch.from_numpy(
                (rng.standard_normal((batch, det.meta.window_samples)) * 0.1).astype(np.float32)
            )
            with torch.inference_mode():
                model(x)  # warm-up
                times = []
                for _ in range(repeats if batch == 64 else repeats * 4):
                    t = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - t)
            results[f"{name}_batch{batch}_ms_per_window"] = round(1000 * float(np.median(times)) / batch, 3)
    return results | {"_variants": variants}


def _variant_eer(model: Any, det: Detector, clips: list[Clip]) -> float:
    windows = [det.windows(c.audio, 16000) for c in clips]
    flat = np.concatenate(windows)
    with torch.inference_mode():
        logits = np.concatenate(
            [model(torch.from_numpy(flat[i : i + 64])).numpy() for i in range(0, len(flat), 64)]
        )
    scores = det.calibrate(logits)
    bounds = np.cumsum([0] + [len(w) for w in windows])
    per_clip = np.array([scores[bounds[i] : bounds[i + 1]].mean() for i in range(len(clips))])
    labels = np.array([c.label for c in clips])
    return eer(per_clip[labels == 0], per_clip[labels == 1])[0]


def evaluate(
    data: Path,
    model: Path | None,
    out: Path,
    *,
    bootstrap: int = 300,
    threads: int = 2,
    shuffle_check: bool = False,
    limits: LimitsSettings | None = None,
) -> dict[str, Any]:
    """`limits`: the worker's (settings.limits); clips it would refuse are left out, as it would."""
    out.mkdir(parents=True, exist_ok=True)
    det = load_detector(model, device="cpu", threads=threads, speech_check=False)
    _log(
        f"model {det.meta.name}@{det.meta.version} ({det.meta.checksum[:12]}), "
        f"threshold {det.meta.threshold:.4f}"
    )
    seen = seen_generators(data)
    test = load_clips(data, "test", limits=limits)
    train = load_clips(data, "train", limits=limits)
    _log(f"test clips: {len(test)}; seen generators: {sorted(seen)}")
    labels = np.array([c.label for c in test])
    report: dict[str, Any] = {
        "model": {
            "name": det.meta.name,
            "version": det.meta.version,
            "checksum": det.meta.checksum,
            "threshold": det.meta.threshold,
            "threshold_1pct_fa": det.meta.threshold_1pct_fa,
        },
        "seen_generators": sorted(seen),
    }
    scores = score_clips(det, [c.audio for c in test])
    report["clip"] = breakdown(scores, test, seen, bootstrap)
    pred = scores >= det.meta.threshold
    report["clip_operating_point"] = {
        "false_alarm_rate_at_eer_threshold": float(pred[labels == 0].mean()),
        "miss_rate_at_eer_threshold": float((~pred[labels == 1]).mean()),
        "false_alarm_rate_at_1pct_threshold": float(
            (scores[labels == 0] >= det.meta.threshold_1pct_fa).mean()
        ),
        "miss_rate_at_1pct_threshold": float((scores[labels == 1] < det.meta.threshold_1pct_fa).mean()),
    }
    _log(f"clip-level pooled EER {report['clip']['pooled']['eer']:.2%}")
    report["calibration"] = calibration(scores, test, seen)
    _reliability_plot(
        out / "reliability.png", report["calibration"], f"Reliability, test split: {det.meta.version}"
    )
    _log(
        "expected calibration error: "
        + ", ".join(f"{k} {v['ece']:.3f}" for k, v in report["calibration"].items())
    )
    report["chunks"] = {}
    for seconds in CHUNKS:
        n = int(seconds * 16000)
        keep = [i for i, c in enumerate(test) if c.audio.size >= n]
        sub = [test[i] for i in keep]
        if not sub or len({c.label for c in sub}) < 2:
            continue
        s = score_clips(det, [c.audio[:n] for c in sub])
        report["chunks"][f"{seconds:g}s"] = breakdown(s, sub, seen, max(50, bootstrap // 3))
        _log(
            f"{seconds:g}s chunks ({len(sub)} clips): "
            f"pooled EER {report['chunks'][f'{seconds:g}s']['pooled']['eer']:.2%}"
        )

    # the shortcut probe: trained on train, scored on test, same breakdown
    probe = ShortcutProbe().fit(feature_matrix([c.audio for c in train]), np.array([c.label for c in train]))
    test_feats = feature_matrix([c.audio for c in test])
    probe_scores = probe.score(test_feats)
    report["probe"] = breakdown(probe_scores, test, seen, bootstrap)
    rng = np.random.default_rng(0)
    shuffled = ShortcutProbe().fit(
        feature_matrix([c.audio for c in train]), rng.permutation(np.array([c.label for c in train]))
    )
    report["probe_label_shuffle"] = eer_metrics(*_split(shuffled.score(test_feats), labels), bootstrap)
    failures = beaten_generators(report["clip"], report["probe"], "probe")
    report["probe_beats_model"] = failures
    _log(
        f"probe pooled EER {report['probe']['pooled']['eer']:.2%}; generators where probe beats model: "
        f"{[f['group'] for f in failures] or 'none'}"
    )

    curves = {
        "pooled": det_points(*_split(scores, labels)),
        "seen generators": det_points(scores[labels == 0], scores[(labels == 1) & _mask(test, seen, True)]),
        "unseen generators": det_points(
            scores[labels == 0], scores[(labels == 1) & _mask(test, seen, False)]
        ),
        "shortcut probe (pooled)": det_points(*_split(probe_scores, labels)),
    }
    _det_plot(out / "det.png", curves, f"DET, test split: {det.meta.name} {det.meta.version}")

    bench = benchmark(det, threads)
    variants = bench.pop("_variants")
    bench["eer_float32"] = report["clip"]["pooled"]["eer"]
    bench["eer_int8_dynamic"] = _variant_eer(variants["int8_dynamic"], det, test)
    bench["eer_torchscript"] = _variant_eer(variants["torchscript"], det, test)
    report["benchmark"] = bench
    _log(f"benchmark: {bench}")

    if shuffle_check:
        report["model_label_shuffle"] = _shuffle_model(data, out, bootstrap, threads)

    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print(render_markdown(report))
    return report


def seen_generators(data: Path) -> set[str]:
    """The synthetic generators of the train split: "seen" in every breakdown."""
    from .data import read_manifest

    rows = read_manifest(data)
    return {r["generator"] for r in rows if r["split"] == "train" and r["label"] == "synthetic"}


def beaten_generators(
    model: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], name: str
) -> list[dict[str, Any]]:
    """The generators on which `other` (the probe, the peer) has the lower EER: our failures."""
    return [
        {"group": key, "model_eer": m["eer"], f"{name}_eer": other[key]["eer"]}
        for key, m in model.items()
        if key.startswith("generator:") and key in other and other[key]["eer"] < m["eer"]
    ]


def _stratified(clips: list[Clip], per_generator: int | None, bona_fide: int | None, seed: int) -> list[Clip]:
    """Up to `per_generator` synthetic clips of each generator and `bona_fide` bona fide clips,
    drawn without replacement (seeded); None keeps them all."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault("human" if c.label == 0 else c.row["generator"], []).append(i)
    keep: list[int] = []
    for name, idx in sorted(groups.items()):
        cap = bona_fide if name == "human" else per_generator
        keep += (
            idx if cap is None or len(idx) <= cap else sorted(rng.choice(idx, cap, replace=False).tolist())
        )
    return [clips[i] for i in sorted(keep)]


def compare_with_peer(
    data: Path,
    model: Path | None,
    out: Path,
    *,
    per_generator: int | None = None,
    bona_fide: int | None = None,
    bootstrap: int = 300,
    threads: int = 2,
    seed: int = 0,
    limits: LimitsSettings | None = None,
) -> dict[str, Any]:
    """The public AASIST peer (training.peer, its official input) and the model on the same test
    clips, per generator: where the peer has the lower EER, ours failed. Writes peer.json and
    peer.md. The peer costs ~1 s per clip on 2 CPU threads, so a subsample may be asked for."""
    from .peer import load_peer

    out.mkdir(parents=True, exist_ok=True)
    det = load_detector(model, device="cpu", threads=threads, speech_check=False)
    peer = load_peer()
    seen = seen_generators(data)
    clips = _stratified(load_clips(data, "test", limits=limits), per_generator, bona_fide, seed)
    _log(f"{len(clips)} test clips for {det.meta.name}@{det.meta.version} and {peer.name}")
    ours = score_clips(det, [c.audio for c in clips])
    theirs: list[np.ndarray] = []
    from rich.progress import track

    for i in track(range(0, len(clips), 16), description="peer", transient=True):
        theirs.append(peer.synthetic_score([c.audio for c in clips[i : i + 16]]))
    report: dict[str, Any] = {
        "model": {"name": det.meta.name, "version": det.meta.version, "checksum": det.meta.checksum},
        "peer": peer.name,
        "sample": {"per_generator": per_generator, "bona_fide": bona_fide, "seed": seed, "clips": len(clips)},
        "seen_generators": sorted(seen),
        "model_breakdown": breakdown(ours, clips, seen, bootstrap),
        "peer_breakdown": breakdown(np.concatenate(theirs), clips, seen, bootstrap),
    }
    report["peer_beats_model"] = beaten_generators(
        report["model_breakdown"], report["peer_breakdown"], "peer"
    )
    (out / "peer.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "peer.md").write_text(render_peer_markdown(report))
    print(render_peer_markdown(report))
    return report


def render_peer_markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [
        f"# {m['name']} {m['version']} beside the public peer ({report['peer']}), same test clips",
        "",
        "| group | ours: EER [95% CI] | peer: EER [95% CI] | n bona fide / synthetic |",
        "|---|---|---|---|",
    ]
    for key, ours in report["model_breakdown"].items():
        peer = report["peer_breakdown"][key]
        lines.append(
            f"| {key} | {ours['eer']:.1%} [{ours['eer_ci95'][0]:.1%}, {ours['eer_ci95'][1]:.1%}] | "
            f"{peer['eer']:.1%} [{peer['eer_ci95'][0]:.1%}, {peer['eer_ci95'][1]:.1%}] | "
            f"{ours['n_bona_fide']} / {ours['n_synthetic']} |"
        )
    beaten = report["peer_beats_model"]
    lines += [
        "",
        "Generators where the peer beats the model (our failures): "
        + (
            ", ".join(f"{b['group']} ({b['model_eer']:.1%} vs {b['peer_eer']:.1%})" for b in beaten) or "none"
        ),
    ]
    return "\n".join(lines) + "\n"


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return scores[labels == 0], scores[labels == 1]


def _mask(clips: list[Clip], seen: set[str], want_seen: bool) -> np.ndarray:
    return np.array([(c.row["generator"] in seen) == want_seen for c in clips])


def _shuffle_model(data: Path, out: Path, bootstrap: int, threads: int) -> dict[str, Any]:
    from .train import TrainConfig, train_and_export

    _log("label-shuffle sanity run: training a model on shuffled labels (short budget)")
    art = train_and_export(
        data,
        out / "shuffled-model",
        TrainConfig(
            minutes=4.0,
            epochs=3,
            threads=threads,
            shuffle_labels=True,
            progress=False,
            version="0.0.0-shuffled",
        ),
    )
    det = load_detector(art, device="cpu", threads=threads, speech_check=False)
    test = load_clips(data, "test")
    labels = np.array([c.label for c in test])
    scores = score_clips(det, [c.audio for c in test])
    return eer_metrics(*_split(scores, labels), bootstrap)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


def _fmt(m: dict[str, Any]) -> str:
    lo, hi = m["eer_ci95"]
    mlo, mhi = m["miss_at_1pct_fa_ci95"]
    return (
        f"{m['eer']:.1%} [{lo:.1%}, {hi:.1%}] | {m['miss_at_1pct_fa']:.1%} [{mlo:.1%}, {mhi:.1%}] | "
        f"{m['n_bona_fide']} / {m['n_synthetic']}"
    )


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation of {report['model']['name']} {report['model']['version']} on the test split", ""]
    lines += [
        "## Whole clips (runtime rule: mean of window scores)",
        "",
        "| group | EER [95% CI] | miss@1%FA [95% CI] | n bona fide / synthetic | probe EER |",
        "|---|---|---|---|---|",
    ]
    for key, m in report["clip"].items():
        p = report["probe"].get(key, {})
        lines.append(f"| {key} | {_fmt(m)} | {p.get('eer', float('nan')):.1%} |")
    for chunk, table in report["chunks"].items():
        lines += [
            "",
            f"## {chunk} chunks (first {chunk} of clips at least that long)",
            "",
            "| group | EER [95% CI] | miss@1%FA [95% CI] | n bona fide / synthetic |",
            "|---|---|---|---|",
        ]
        for key in ("pooled", "seen_generators", "unseen_generators"):
            if key in table:
                lines.append(f"| {key} | {_fmt(table[key])} |")
    lines += [
        "",
        "## Sanity checks",
        "",
        f"- probe with shuffled labels: EER {report['probe_label_shuffle']['eer']:.1%}",
    ]
    if "model_label_shuffle" in report:
        lines.append(f"- network trained on shuffled labels: EER {report['model_label_shuffle']['eer']:.1%}")
    fails = report["probe_beats_model"]
    lines.append(
        "- generators where the probe beats the model (model failures): "
        + (
            ", ".join(
                f"{f['group']} (model {f['model_eer']:.1%} vs probe {f['probe_eer']:.1%})" for f in fails
            )
            if fails
            else "none"
        )
    )
    if "calibration" in report:
        lines.append(
            f"- expected calibration error ({CALIBRATION_BINS} bins; reliability.png): "
            + ", ".join(
                f"{k.replace('_', ' ')} {v['ece']:.3f} (n={v['n']})" for k, v in report["calibration"].items()
            )
        )
    op = report["clip_operating_point"]
    lines.append(
        f"- at the shipped EER threshold: false alarms {op['false_alarm_rate_at_eer_threshold']:.1%}, "
        f"misses {op['miss_rate_at_eer_threshold']:.1%}; at the 1%-FA threshold: false alarms "
        f"{op['false_alarm_rate_at_1pct_threshold']:.1%}, misses {op['miss_rate_at_1pct_threshold']:.1%}"
    )
    b = report["benchmark"]
    lines += [
        "",
        f"## Scoring cost per 4 s window ({b['threads']} CPU threads, ms)",
        "",
        "| variant | batch 1 | batch 64 | pooled EER |",
        "|---|---|---|---|",
    ]
    names = {
        "float32": "float32 eager",
        "int8_dynamic": "int8 dynamic (Linear layers)",
        "torchscript": "TorchScript trace (the runtime's)",
    }
    for v, name in names.items():
        lines.append(
            f"| {name} | {b[f'{v}_batch1_ms_per_window']} | {b[f'{v}_batch64_ms_per_window']} | "
            f"{b[f'eer_{v}']:.2%} |"
        )
    return "\n".join(lines) + "\n"
