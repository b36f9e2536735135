"""The detector's evaluation metrics on score arrays: EER and the calibration error that the
eval report prints for seen and unseen generators."""

from __future__ import annotations

import math

import numpy as np

from services.detector.training.metrics import eer, expected_calibration_error, reliability


def test_eer_of_separable_and_of_identical_scores() -> None:
    assert eer(np.array([0.1, 0.2]), np.array([0.8, 0.9]))[0] == 0.0
    assert eer(np.array([0.5, 0.5]), np.array([0.5, 0.5]))[0] == 0.5


def test_a_calibrated_model_has_a_small_error_and_an_overconfident_one_a_large_one() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 50_000)
    labels = (rng.uniform(0, 1, scores.size) < scores).astype(int)  # P(synthetic) = score
    assert expected_calibration_error(scores, labels) < 0.02
    # says 0.99 on everything, half of it synthetic: off by 0.49 in its one bin
    half = np.array([0, 1] * 500)
    assert math.isclose(expected_calibration_error(np.full(1000, 0.99), half), 0.49, abs_tol=1e-9)
    # right ranking, wrong confidence: every synthetic clip at 0.55, every bona fide at 0.45
    squeezed = np.where(half == 1, 0.55, 0.45)
    assert eer(squeezed[half == 0], squeezed[half == 1])[0] == 0.0
    assert math.isclose(expected_calibration_error(squeezed, half), 0.45, abs_tol=1e-9)


def test_reliability_bins_count_every_clip_and_keep_the_edges() -> None:
    scores = np.array([0.0, 0.05, 0.1, 0.5, 0.999, 1.0])
    labels = np.array([0, 0, 1, 1, 1, 1])
    edges, mean_score, share, count = reliability(scores, labels, bins=10)
    assert count.sum() == scores.size and edges[0] == 0.0 and edges[-1] == 1.0
    assert count[0] == 2 and count[1] == 1 and count[5] == 1 and count[9] == 2  # 1.0 is in the last bin
    assert share[0] == 0.0 and share[9] == 1.0
    assert math.isnan(mean_score[3]) and count[3] == 0
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))
