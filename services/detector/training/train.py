"""`audioguard train`: fit the detector on a built data set and export the shipped artifact.

Windows are 4 s at 16 kHz: a longer clip gives a random 4 s crop, a shorter one is repeat-padded
(tiled, as the runtime does) from a random start. Loss: binary cross-entropy. The best epoch by
dev EER is kept, then a Platt scaling (scale, bias) is fitted on dev window logits so scores are
probabilities, and the EER and 1 %-false-alarm thresholds are read off the dev clip scores computed
exactly as the runtime computes them (windows -> calibrated scores -> mean).

This module must never read the test split: thresholds and model selection use dev only.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from services.audio import decode_with_limits
from services.errors import PoisonMessage
from services.settings import LimitsSettings

from .._artifact import DEFAULT_NAME, default_artifact_dir
from .._frontend import FrontEndConfig
from .._model import DetectorNet, NetConfig, count_parameters
from .._windows import cut_windows, repeat_pad
from .export import export_artifact
from .metrics import eer, miss_at_fa
from .rawboost import rawboost

WINDOW_SECONDS = 4.0
MIN_TAIL_SECONDS = 1.0


@dataclass(frozen=True)
class TrainConfig:
    minutes: float = 28.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-3
    speed_perturb: float = 0.6
    #: SpecAugment-style masks on the features (two bands of <= 24 bins, two spans of <= 40
    #: frames per window, drawn per window). 2.0.0 shipped with them; on the 3.0.0 data, whose
    #: dev holds a generator training never sees, the run without them was better on dev
    #: (11.4 % against 12.7 % EER) and so ships (docs/model-card.md, "Recipe choice")
    spec_augment: bool = False
    threads: int = 2
    seed: int = 0
    shuffle_labels: bool = False
    version: str = "3.0.0"
    max_train_clips: int | None = None
    progress: bool = True
    #: generators left out of train and dev entirely (leave-one-family-out, training.lofo)
    hold_out: tuple[str, ...] = ()
    #: the one-class head and its OC-softmax loss (NetConfig.one_class) instead of binary
    #: cross-entropy; margins as published: bona fide cos >= 0.9, synthetic cos <= 0.2
    one_class: bool = False
    #: share of training windows given one RawBoost distortion (training.rawboost); 0 = off
    rawboost: float = 0.0


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    label: int  # 1 = synthetic
    row: dict[str, str]


def load_clips(
    data: Path, split: str, limit: int | None = None, limits: LimitsSettings | None = None
) -> list[Clip]:
    """The split's clips, decoded by the worker's own path under the worker's limits, so training
    and evaluation see what the worker would score. A clip the worker would refuse is left out with
    a line saying why (a built set has none: the build trims silence and drops short takes)."""
    from .data import read_manifest

    rows = [r for r in read_manifest(data) if r["split"] == split]
    if limit is not None:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    clips = []
    for r in rows:
        try:
            audio = decode_with_limits(data / r["path"], limits or LimitsSettings())
        except PoisonMessage as exc:
            print(f"[train] left out {r['path']}: {exc.reason}: {exc.message}", file=sys.stderr, flush=True)
            continue
        if audio.sample_rate != 16000:
            raise ValueError(f"{r['path']}: expected 16 kHz, got {audio.sample_rate}")
        clips.append(Clip(audio.samples, 1 if r["label"] == "synthetic" else 0, r))
    return clips


#: speed perturbation targets (resampling 16 kHz audio to these rates and playing it back at
#: 16 kHz shifts pitch, formants and tempo together); small ratios keep the resampling kernels cheap
_PERTURB_RATES = (14000, 14400, 15200, 16800, 17600, 18000)


def _perturb(x: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """With probability p, change the voice (pitch+formants+tempo by up to +/-12 %): with only a
    couple of dozen human speakers, this stops the net from memorising who is human."""
    if p <= 0 or rng.random() >= p:
        return x

    target = int(rng.choice(_PERTURB_RATES))
    y = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(x)), 16000, target)
    return np.asarray(y.numpy(), dtype=np.float32)


def _train_window(
    x: np.ndarray, n: int, rng: np.random.Generator, perturb: float = 0.0, boost: float = 0.0
) -> np.ndarray:
    x = _perturb(x, rng, perturb)
    if x.size >= n:
        start = int(rng.integers(0, x.size - n + 1))
        window = x[start : start + n]
    else:
        shift = int(rng.integers(0, max(1, x.size)))
        window = repeat_pad(np.roll(x, -shift), n)
    return rawboost(window, rng, boost)


def clip_logits(net: DetectorNet, clips: list[Clip], window: int, batch: int = 64) -> list[np.ndarray]:
    """Runtime-identical windows per clip -> per-window logits."""
    per_clip = [cut_windows(c.audio, window, int(MIN_TAIL_SECONDS * 16000)) for c in clips]
    flat = np.concatenate(per_clip)
    out = []
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(flat), batch):
            out.append(net(torch.from_numpy(flat[i : i + batch])).numpy())
    logits = np.concatenate(out)
    bounds = np.cumsum([0] + [len(w) for w in per_clip])
    return [logits[bounds[i] : bounds[i + 1]] for i in range(len(clips))]


#: OC-softmax margins on the cosine to the bona fide direction (Zhang et al., 2021)
OC_MARGIN_BONA_FIDE = 0.9
OC_MARGIN_SYNTHETIC = 0.2


def _loss(logits: torch.Tensor, labels: torch.Tensor, nc: NetConfig) -> torch.Tensor:
    """Binary cross-entropy, or with the one-class head OC-softmax: the logit is -alpha * cos,
    so bona fide pays softplus(alpha * (m_bona - cos)) and synthetic softplus(alpha * (cos - m_synth))."""
    if not nc.one_class:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    a = nc.oc_alpha
    synthetic = torch.nn.functional.softplus(-logits - a * OC_MARGIN_SYNTHETIC)
    bona_fide = torch.nn.functional.softplus(logits + a * OC_MARGIN_BONA_FIDE)
    return torch.where(labels > 0.5, synthetic, bona_fide).mean()


def _learning_rate(peak: float, done: float) -> float:
    """Warm-up over the first 10 %, then cosine decay to zero. `done` is the larger of the share
    of steps and the share of the time budget used, so a run that the budget stops early has
    still annealed (the first model stopped in epoch 14 of 24 at a high learning rate)."""
    done = min(max(done, 0.0), 1.0)
    if done < 0.1:
        return peak * done / 0.1
    return peak * 0.5 * (1 + math.cos(math.pi * (done - 0.1) / 0.9))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def fit_platt(window_logits: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    z = np.concatenate(window_logits).reshape(-1, 1)
    y = np.concatenate([np.full(len(w), lab) for w, lab in zip(window_logits, labels, strict=True)])
    lr = LogisticRegression(C=1.0).fit(z, y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def clip_scores(window_logits: list[np.ndarray], scale: float, bias: float) -> np.ndarray:
    return np.array([float(_sigmoid(scale * w.astype(np.float64) + bias).mean()) for w in window_logits])


def _progress(total: int, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]train[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
        transient=False,
    )


def train(data: Path, cfg: TrainConfig) -> tuple[DetectorNet, NetConfig, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    fe, nc = FrontEndConfig(), NetConfig(one_class=cfg.one_class)
    window = int(WINDOW_SECONDS * fe.sample_rate)
    train_clips = load_clips(data, "train", cfg.max_train_clips)
    dev_clips = load_clips(
        data, "dev", None if cfg.max_train_clips is None else max(8, cfg.max_train_clips // 3)
    )
    if cfg.hold_out:
        train_clips = [c for c in train_clips if c.row["generator"] not in cfg.hold_out]
        dev_clips = [c for c in dev_clips if c.row["generator"] not in cfg.hold_out]
    labels = np.array([c.label for c in train_clips], dtype=np.float32)
    if cfg.shuffle_labels:
        labels = rng.permutation(labels)
    dev_labels = np.array([c.label for c in dev_clips])
    net = DetectorNet(fe, nc)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    masking = torch.nn.Sequential(
        torchaudio.transforms.FrequencyMasking(24, iid_masks=True),
        torchaudio.transforms.FrequencyMasking(24, iid_masks=True),
        torchaudio.transforms.TimeMasking(40, iid_masks=True),
        torchaudio.transforms.TimeMasking(40, iid_masks=True),
    )
    deadline = time.monotonic() + cfg.minutes * 60
    best: tuple[float, dict[str, torch.Tensor], int] = (float("inf"), {}, -1)
    history = []
    started = time.monotonic()
    stopped_early = False
    with _progress(cfg.epochs * steps_per_epoch, cfg.progress) as bar:
        task = bar.add_task("epoch 1", total=cfg.epochs * steps_per_epoch, status="")
        for epoch in range(cfg.epochs):
            net.train()
            order = rng.permutation(len(train_clips))
            losses = []
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x = torch.from_numpy(
                    np.stack(
                        [
                            _train_window(train_clips[i].audio, window, rng, cfg.speed_perturb, cfg.rawboost)
                            for i in idx
                        ]
                    )
                )
                y = torch.from_numpy(labels[idx])
                feats = net.frontend(x)
                if cfg.spec_augment:
                    feats = masking(feats.unsqueeze(1)).squeeze(1)
                loss = _loss(net.classify(feats), y, nc)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, step {b}")
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                done = max(
                    (epoch * steps_per_epoch + b + 1) / total_steps,
                    1 - (deadline - time.monotonic()) / (cfg.minutes * 60),
                )
                for group in opt.param_groups:
                    group["lr"] = _learning_rate(cfg.lr, done)
                losses.append(float(loss.detach()))
                bar.update(
                    task,
                    advance=1,
                    description=f"epoch {epoch + 1}/{cfg.epochs}",
                    status=f"loss {np.mean(losses[-20:]):.3f}",
                )
                if time.monotonic() > deadline:
                    stopped_early = True
                    break
            dev_logits = clip_logits(net, dev_clips, window)
            dev_mean = np.array([float(w.mean()) for w in dev_logits])
            dev_eer, _ = eer(dev_mean[dev_labels == 0], dev_mean[dev_labels == 1])
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)),
                    "dev_eer": dev_eer,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            bar.update(task, status=f"loss {np.mean(losses):.3f} dev EER {dev_eer:.2%}")
            print(
                f"epoch {epoch + 1}: loss {np.mean(losses):.4f} dev EER {dev_eer:.2%} "
                f"({time.monotonic() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
            if dev_eer < best[0] or best[2] < 0:
                best = (dev_eer, {k: v.detach().clone() for k, v in net.state_dict().items()}, epoch + 1)
            if stopped_early:
                break
    net.load_state_dict(best[1])
    net.eval()
    summary = {
        "train_clips": len(train_clips),
        "dev_clips": len(dev_clips),
        "best_epoch": best[2],
        "epochs_run": len(history),
        "stopped_by_time_budget": stopped_early,
        "train_seconds": round(time.monotonic() - started, 1),
        "history": history,
        "shuffled_labels": cfg.shuffle_labels,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "speed_perturb": cfg.speed_perturb,
        "spec_augment": cfg.spec_augment,
        "one_class": cfg.one_class,
        "rawboost": cfg.rawboost,
        "weight_decay": cfg.weight_decay,
        "hold_out": list(cfg.hold_out),
        "frontend": FrontEndConfig().to_dict(),
        "parameters": count_parameters(net),
    }
    return net, nc, summary | {"_dev_clips": dev_clips}


def calibrate(net: DetectorNet, dev_clips: list[Clip]) -> dict[str, Any]:
    window = int(WINDOW_SECONDS * net.frontend.config.sample_rate)
    labels = np.array([c.label for c in dev_clips])
    logits = clip_logits(net, dev_clips, window)
    scale, bias = fit_platt(logits, labels)
    scores = clip_scores(logits, scale, bias)
    dev_eer, th = eer(scores[labels == 0], scores[labels == 1])
    miss1, th1 = miss_at_fa(scores[labels == 0], scores[labels == 1], 0.01)
    generators = np.array([c.row.get("generator", "") for c in dev_clips])
    # each synthetic generator against all dev bona fide: piper, dev's generator that training
    # never saw, is the selection split's view of generalisation
    by_generator = {
        gen: eer(scores[labels == 0], scores[(labels == 1) & (generators == gen)])[0]
        for gen in sorted(set(generators[labels == 1]))
    }
    return {
        "scale": scale,
        "bias": bias,
        "threshold": th,
        "threshold_1pct_fa": th1,
        "dev_eer": dev_eer,
        "dev_miss_at_1pct_fa": miss1,
        "dev_eer_by_generator": by_generator,
    }


def train_and_export(data: Path, out: Path | None, cfg: TrainConfig) -> Path:
    from .data import manifest_sha256

    if out is None:
        out = Path("data/detector-shuffled-model") if cfg.shuffle_labels else default_artifact_dir()
    net, nc, summary = train(data, cfg)
    dev_clips = summary.pop("_dev_clips")
    cal = calibrate(net, dev_clips)
    print(
        f"dev (calibrated, runtime rule): EER {cal['dev_eer']:.2%} threshold {cal['threshold']:.4f}; "
        f"miss@1%FA {cal['dev_miss_at_1pct_fa']:.2%} threshold {cal['threshold_1pct_fa']:.4f}",
        file=sys.stderr,
    )
    for gen, value in cal["dev_eer_by_generator"].items():
        print(f"  dev EER {gen}: {value:.2%}", file=sys.stderr)
    margin = 0.05
    export_artifact(
        net,
        nc,
        out,
        name=DEFAULT_NAME,
        version=cfg.version,
        window_seconds=WINDOW_SECONDS,
        threshold=round(cal["threshold"], 6),
        threshold_1pct_fa=round(cal["threshold_1pct_fa"], 6),
        calibration_scale=cal["scale"],
        calibration_bias=cal["bias"],
        train_manifest_sha256=manifest_sha256(data),
        provisional=False,
        inconclusive_margin=margin,
        min_tail_seconds=MIN_TAIL_SECONDS,
        extra={
            "training": summary,
            "dev_metrics": {
                "eer": cal["dev_eer"],
                "miss_at_1pct_fa": cal["dev_miss_at_1pct_fa"],
                "eer_by_generator": cal["dev_eer_by_generator"],
            },
        },
    )
    print(f"wrote {out}", file=sys.stderr)
    return out
