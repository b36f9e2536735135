"""`audioguard lofo`: leave-one-generator-family-out, the detector's generalisation estimate.

For every generator family that training uses, train the recipe with that family left out of
train *and* dev (so neither the weights, the epoch choice nor the calibration ever saw it), then
score it. The rule, fixed before any fold was looked at:

- held-out side: every clip of the family in any split (train, dev and test: the fold's model
  saw none of them), so small families still give a usable count;
- bona fide side: the test split's bona fide clips only (unseen speakers; train and dev
  speakers were seen by the fold's model);
- per fold also the *seen* EER: the test split's synthetic clips of the families the fold
  trained on, against the same bona fide clips;
- scores by the runtime rule (windows -> Platt-calibrated window scores -> mean per clip), the
  calibration fitted on the fold's own dev split.

The summary is the mean and the worst held-out EER over the families; families the data set
holds only in test (the reserved ones) are not folds: no training run ever saw them anyway, and
`audioguard eval` reports them. Writes lofo.json, lofo.md and lofo.png.

This module must never change the recipe: it calls `train` with the caller's TrainConfig plus
`hold_out`, nothing else.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .eval import CALIBRATION_BINS, eer_metrics, save_figure
from .metrics import expected_calibration_error
from .train import WINDOW_SECONDS, Clip, TrainConfig, calibrate, clip_logits, clip_scores, load_clips, train


def _log(msg: str) -> None:
    print(f"[lofo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def training_families(rows: list[dict[str, str]]) -> list[str]:
    """The synthetic generators of the train and dev splits: the folds."""
    return sorted(
        {r["generator"] for r in rows if r["split"] in ("train", "dev") and r["label"] == "synthetic"}
    )


def run_fold(
    data: Path,
    family: str,
    cfg: TrainConfig,
    by_split: dict[str, list[Clip]],
    n_boot: int,
) -> dict[str, Any]:
    net, _, summary = train(data, replace(cfg, hold_out=(family,)))
    cal = calibrate(net, summary.pop("_dev_clips"))
    window = int(WINDOW_SECONDS * net.frontend.config.sample_rate)
    test = by_split["test"]
    bona = [c for c in test if c.label == 0]
    held = [c for split in by_split.values() for c in split if c.label == 1 and c.row["generator"] == family]
    trained = _families_of(by_split) - {family}
    seen = [c for c in test if c.label == 1 and c.row["generator"] in trained]

    def scores(clips: list[Clip]) -> np.ndarray:
        return (
            clip_scores(clip_logits(net, clips, window), cal["scale"], cal["bias"]) if clips else np.array([])
        )

    b, h = scores(bona), scores(held)
    return {
        "family": family,
        "held_out": eer_metrics(b, h, n_boot),
        # calibrated on a dev split without the family: how honest P(synthetic) is on a new one
        "held_out_ece": expected_calibration_error(
            np.concatenate([b, h]), np.concatenate([np.zeros(b.size), np.ones(h.size)]), CALIBRATION_BINS
        ),
        "seen": eer_metrics(b, scores(seen), n_boot),
        "dev_eer": cal["dev_eer"],
        "train_clips": summary["train_clips"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["train_seconds"],
    }


def _families_of(by_split: dict[str, list[Clip]]) -> set[str]:
    """The families training uses (train + dev synthetic generators), from decoded clips."""
    return {c.row["generator"] for s in ("train", "dev") for c in by_split.get(s, []) if c.label == 1}


def leave_one_family_out(
    data: Path,
    out: Path,
    cfg: TrainConfig,
    *,
    families: list[str] | None = None,
    bootstrap: int = 300,
) -> dict[str, Any]:
    from .data import read_manifest

    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(data)
    all_families = training_families(rows)
    chosen = families or all_families
    unknown = sorted(set(chosen) - set(all_families))
    if unknown:
        raise ValueError(f"not a training family of this data set: {unknown} (families: {all_families})")
    by_split = {split: load_clips(data, split) for split in ("train", "dev", "test")}
    folds = []
    for i, family in enumerate(chosen, 1):
        _log(f"fold {i}/{len(chosen)}: {family} held out")
        fold = run_fold(data, family, cfg, by_split, bootstrap)
        folds.append(fold)
        _log(
            f"{family}: held-out EER {fold['held_out']['eer']:.2%} "
            f"(n={fold['held_out']['n_synthetic']}), seen EER {fold['seen']['eer']:.2%}"
        )
        # written after every fold: a long run that is stopped keeps what it measured
        report = _summary(folds, cfg, chosen, all_families)
        (out / "lofo.json").write_text(json.dumps(report, indent=2) + "\n")
    report = _summary(folds, cfg, chosen, all_families)
    (out / "lofo.md").write_text(render_markdown(report))
    _plot(out / "lofo.png", report)
    print(render_markdown(report))
    return report


def _summary(
    folds: list[dict[str, Any]], cfg: TrainConfig, chosen: list[str], families: list[str]
) -> dict[str, Any]:
    held = [f["held_out"]["eer"] for f in folds]
    seen = [f["seen"]["eer"] for f in folds]
    eces = [f["held_out_ece"] for f in folds]
    worst = max(folds, key=lambda f: f["held_out"]["eer"]) if folds else None
    return {
        "recipe": {
            "epochs": cfg.epochs,
            "minutes_per_fold": cfg.minutes,
            "seed": cfg.seed,
            "spec_augment": cfg.spec_augment,
            "one_class": cfg.one_class,
            "rawboost": cfg.rawboost,
            "threads": cfg.threads,
        },  # fmt: skip
        "families": families,
        "folds_planned": chosen,
        "folds": folds,
        "mean_held_out_eer": float(np.mean(held)) if held else float("nan"),
        "worst_held_out_eer": float(max(held)) if held else float("nan"),
        "worst_family": worst["family"] if worst else None,
        "mean_seen_eer": float(np.mean(seen)) if seen else float("nan"),
        "mean_held_out_ece": float(np.mean(eces)) if eces else float("nan"),
    }


def render_markdown(report: dict[str, Any]) -> str:
    r = report["recipe"]
    n_bona = report["folds"][0]["held_out"]["n_bona_fide"] if report["folds"] else 0
    lines = [
        "# Leave-one-generator-family-out",
        "",
        f"Recipe: {r['epochs']} planned epochs, {r['minutes_per_fold']:g} min budget per fold, "
        f"seed {r['seed']}, SpecAugment {'on' if r['spec_augment'] else 'off'}, "
        f"{'one-class head (OC-softmax)' if r['one_class'] else 'binary cross-entropy'}, "
        f"RawBoost on {r['rawboost']:.0%} of windows, "
        f"{r['threads']} threads.",
        "",
        "| held-out family | n synthetic | held-out EER [95% CI] | miss@1%FA | seen EER (test) "
        "| dev EER | held-out ECE | epochs (best) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in report["folds"]:
        h, s = f["held_out"], f["seen"]
        lo, hi = h["eer_ci95"]
        lines.append(
            f"| {f['family']} | {h['n_synthetic']} | {h['eer']:.1%} [{lo:.1%}, {hi:.1%}] | "
            f"{h['miss_at_1pct_fa']:.1%} | {s['eer']:.1%} | {f['dev_eer']:.1%} | "
            f"{f['held_out_ece']:.3f} | {f['epochs_run']} ({f['best_epoch']}) |"
        )
    lines += [
        "",
        f"Mean held-out EER **{report['mean_held_out_eer']:.1%}**, "
        f"worst **{report['worst_held_out_eer']:.1%}** ({report['worst_family']}); "
        f"mean seen EER {report['mean_seen_eer']:.1%}; mean held-out ECE "
        f"{report['mean_held_out_ece']:.3f} ({CALIBRATION_BINS} bins, the held-out "
        f"family's clips with the bona fide side). Bona fide side: the test split's {n_bona} clips.",
    ]
    return "\n".join(lines) + "\n"


def _plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds = report["folds"]
    names = [f["family"] for f in folds]
    held = [100 * f["held_out"]["eer"] for f in folds]
    seen = [100 * f["seen"]["eer"] for f in folds]
    lo = [100 * (f["held_out"]["eer"] - f["held_out"]["eer_ci95"][0]) for f in folds]
    hi = [100 * (f["held_out"]["eer_ci95"][1] - f["held_out"]["eer"]) for f in folds]
    x = np.arange(len(folds))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(folds)), 4.5))
    ax.bar(x - 0.2, held, 0.4, yerr=[lo, hi], capsize=3, label="held-out family (never seen)")
    ax.bar(x + 0.2, seen, 0.4, label="seen families (test split)")
    ax.axhline(100 * report["mean_held_out_eer"], color="k", linestyle=":", label="mean held-out")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("EER (%)")
    save_figure(fig, ax, path, "Leave-one-generator-family-out", legend="best", grid="y")
