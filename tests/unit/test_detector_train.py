"""Training end to end on a tiny generated set, without data/: espeak-ng speech (or, where
espeak-ng is missing, harmonic buzzes, said out loud in the test report) against bona fide demo clips."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.detector import load_detector
from services.detector.training.channel import RATE, apply_chain, draw_chain
from services.detector.training.data import write_manifest
from services.detector.training.demo import DEMO_DIR
from services.detector.training.train import TrainConfig, train_and_export

TEXTS = (
    "the quick brown fox jumps over the lazy dog",
    "this is a small test of the detector",
    "seven silver spoons lay on the table",
    "where is the fish that swallowed the key",
)


def _synthetic(tmp: Path, i: int) -> tuple[np.ndarray, str]:
    if shutil.which("espeak-ng"):
        wav = tmp / f"e{i}.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us+m3" if i % 2 else "en-us+f2", "-w", str(wav), TEXTS[i % 4]],
            check=True,
            capture_output=True,
        )
        x, rate = sf.read(wav, dtype="float32")
        from services.detector._windows import resample

        return resample(x, rate, RATE), "espeak-ng"
    t = np.arange(int(RATE * 2.0)) / RATE
    f0 = 110 + 20 * i
    return (0.2 * np.sign(np.sin(2 * np.pi * f0 * t))).astype(np.float32), "buzz"


def _write_set(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    bona = sorted(p for p in DEMO_DIR.glob("*bona_fide*.flac"))[:8]
    assert len(bona) >= 4, "the shipped demo clips provide the bona fide side"
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        split = "train" if i < 6 else "dev"
        x, rate = sf.read(bona[i % len(bona)], dtype="float32")
        for label, audio, gen in (("bona_fide", x, "human"), ("synthetic", *_synthetic(root, i))):
            treated = apply_chain(audio, draw_chain(rng, 0.3, 0.0), rng, already_narrowband=False)
            rel = Path("clips") / split / label / f"{i}.flac"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, treated, RATE)
            rows.append(
                {
                    "path": str(rel),
                    "split": split,
                    "label": label,
                    "generator": gen,
                    "voice": gen,
                    "speaker": f"{gen}-{i}",
                    "language": "en",
                    "source_package": "test",
                    "source_version": "0",
                    "licence": "test",
                    "duration": f"{treated.size / RATE:.3f}",
                    "sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest(),
                    "channel": "",
                    "text": "",
                    "source_file": "",
                }
            )
    write_manifest(root / "manifest.csv", rows)
    return root


def test_train_a_few_steps_and_load(tmp_path: Path) -> None:
    data = _write_set(tmp_path / "data")
    art = train_and_export(
        data,
        tmp_path / "model",
        TrainConfig(
            minutes=2.0, epochs=2, batch_size=4, threads=1, progress=False, version="0.0.0-test", rawboost=0.5
        ),
    )
    det = load_detector(art, device="cpu", threads=1)
    assert det.meta.version == "0.0.0-test" and not det.meta.provisional
    assert 0.0 <= det.meta.threshold <= 1.0 and 0.0 <= det.meta.threshold_1pct_fa <= 1.0
    import json

    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["training"]["epochs_run"] == 2 and manifest["training"]["rawboost"] == 0.5
    assert all(np.isfinite(h["loss"]) for h in manifest["training"]["history"])
    assert (
        manifest["train_manifest_sha256"] == hashlib.sha256((data / "manifest.csv").read_bytes()).hexdigest()
    )
    clip, rate = sf.read(next(DEMO_DIR.glob("*.flac")), dtype="float32")
    d1 = det.score_samples(clip, rate)
    d2 = det.score_samples(clip, rate)
    assert d1 == d2 and 0.0 <= d1.score <= 1.0


def test_channel_chain_keeps_length_rate_and_level() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(RATE * 2) / RATE
    x = (0.3 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    for _ in range(12):
        chain = draw_chain(rng, 0.5, 0.0)
        y = apply_chain(x, chain, rng, already_narrowband=False)
        assert y.dtype == np.float32 and abs(y.size - x.size) < RATE // 4
        rms_db = 20 * np.log10(np.sqrt(np.mean(y**2)))
        assert abs(rms_db - chain.level_dbfs) < 3.0 or np.abs(y).max() >= 0.97


@pytest.mark.parametrize("seed", [1, 2])
def test_chain_draw_is_deterministic(seed: int) -> None:
    a = draw_chain(np.random.default_rng(seed), 0.35, 0.5)
    b = draw_chain(np.random.default_rng(seed), 0.35, 0.5)
    assert a == b


def test_one_class_loss_pays_by_angle_to_the_bona_fide_direction() -> None:
    import torch

    from services.detector._model import NetConfig
    from services.detector.training.train import _loss

    nc = NetConfig(one_class=True)
    a = nc.oc_alpha
    cos = torch.tensor([1.0, 0.5, 0.1, -0.5, 0.5, 0.95])
    labels = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    per = [float(_loss(-a * cos[i : i + 1], labels[i : i + 1], nc)) for i in range(6)]
    # bona fide: cheap inside the 0.9 margin, dearer the further out; synthetic: cheap below 0.2
    assert per[0] < 0.15 < 1.0 < per[1] < per[2]
    assert per[3] < 0.01 < 1.0 < per[4] < per[5]


def test_one_class_recipe_trains_exports_and_scores(tmp_path: Path) -> None:
    import json

    data = _write_set(tmp_path / "data")
    art = train_and_export(
        data,
        tmp_path / "model",
        TrainConfig(
            minutes=2.0, epochs=1, batch_size=4, threads=1, progress=False, version="0.0.0-oc", one_class=True
        ),
    )
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["network"]["one_class"] is True and manifest["training"]["one_class"] is True
    det = load_detector(art, device="cpu", threads=1)
    clip, rate = sf.read(next(DEMO_DIR.glob("*.flac")), dtype="float32")
    d = det.score_samples(clip, rate)
    assert 0.0 <= d.score <= 1.0
    # the logit is -alpha * cos, so no window can leave [-alpha, alpha]
    logits = det.logits(det.windows(clip, rate))
    assert np.all(np.abs(logits) <= 20.0 + 1e-4)
