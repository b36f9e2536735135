"""The null scorer: the real model's window geometry and verdict shape, constant scores, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from services.detector import load_detector
from services.detector.null import NULL_MODEL_NAME, load_null_scorer


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_detector(device="cpu")


@pytest.mark.parametrize("seconds", [0.05, 1.0, 3.99, 4.0, 4.3, 5.5, 8.0, 12.0, 12.9])
@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_window_count_matches_the_model(model, seconds: float, rate: int) -> None:  # type: ignore[no-untyped-def]
    null = load_null_scorer()
    samples = np.zeros(int(seconds * rate), dtype=np.float32)
    assert len(null.windows(samples, rate)) == len(model.windows(samples, rate))
    assert null.windows(samples, rate).shape[1] == model.meta.window_samples


def test_constant_scores_and_a_null_model_name(model) -> None:  # type: ignore[no-untyped-def]
    null = load_null_scorer()
    windows = null.windows(np.ones(16000 * 12, dtype=np.float32), 16000)
    scores = null.score_windows(windows)
    assert scores.shape == (3,) and np.all(scores == scores[0]) and 0.0 <= scores[0] <= 1.0
    decision = null.decide(scores)
    assert decision.window_count == 3 and decision.label in {"bona_fide", "inconclusive", "synthetic"}
    assert null.meta.name == NULL_MODEL_NAME != model.meta.name
    assert null.meta.window_samples == model.meta.window_samples
    assert null.memory_stats() is None


def test_importing_it_does_not_import_torch() -> None:
    code = "import sys, services.detector.null; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
