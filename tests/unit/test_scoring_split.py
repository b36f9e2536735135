"""score_items: errors per item; a failing batch (out-of-memory or anything else) is split
before any item is blamed, and the results keep the input's length and order."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.steps import score_items
from services.errors import ResourceExhausted, RetryableError


def _items(sizes: list[int]) -> list[np.ndarray]:
    return [np.full((n, 4), float(i + 1), dtype=np.float32) for i, n in enumerate(sizes)]


def _score(windows: np.ndarray) -> np.ndarray:
    return windows[:, 0] / 100.0


class Device:
    """A scorer with a memory limit (windows per call) and optional poison windows."""

    def __init__(self, max_windows: int = 10_000, poison: float | None = None) -> None:
        self.max_windows = max_windows
        self.poison = poison
        self.calls: list[int] = []

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.calls.append(len(windows))
        if len(windows) > self.max_windows:
            raise ResourceExhausted("cuda_oom", f"{len(windows)} windows do not fit")
        if self.poison is not None and (windows == self.poison).any():
            raise ValueError("the net cannot digest this window")
        return _score(windows)


def test_a_healthy_batch_is_scored_in_one_call_per_item_slices() -> None:
    items = _items([3, 1, 2])
    device = Device()
    results = score_items(device, items)
    assert device.calls == [6]
    assert [r.tolist() for r in results] == [_score(x).tolist() for x in items]  # type: ignore[union-attr]


def test_out_of_memory_splits_until_it_fits_and_blames_nobody() -> None:
    items = _items([2, 2, 2, 2, 2, 2, 2, 2])
    device = Device(max_windows=4)
    results = score_items(device, items)
    assert len(results) == len(items)
    assert all(not isinstance(r, Exception) for r in results)
    assert [r.tolist() for r in results] == [_score(x).tolist() for x in items]  # type: ignore[union-attr]
    assert max(n for n in device.calls if n <= 4) == 4  # it went back to batches that fit, not to singles


def test_one_poison_item_fails_alone_and_its_neighbours_get_scores() -> None:
    items = _items([1, 2, 1, 3, 1, 1, 2, 1])
    poison_value = 4.0  # the fourth item is the poison
    device = Device(poison=poison_value)
    results = score_items(device, items)
    assert len(results) == len(items)
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [3]
    assert isinstance(results[3], RetryableError) and results[3].reason == "scoring_failed"
    for i, (item, result) in enumerate(zip(items, results, strict=True)):
        if i != 3:
            assert result.tolist() == _score(item).tolist()  # type: ignore[union-attr]
    # splitting halves: about log2(n) levels, far fewer calls than scoring every item alone twice
    assert len(device.calls) <= 2 * len(items)


def test_an_item_too_large_for_the_device_alone_stays_retryable_out_of_memory() -> None:
    items = _items([1, 9, 1])
    results = score_items(Device(max_windows=4), items)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert isinstance(results[1], ResourceExhausted) and results[1].reason == "cuda_oom"


def test_a_scorer_that_returns_the_wrong_length_is_caught() -> None:
    results = score_items(lambda w: np.zeros(len(w) + 1, dtype=np.float32), _items([2, 1]))
    assert all(isinstance(r, RetryableError) and r.reason == "scorer_length" for r in results)


@pytest.mark.parametrize("sizes", [[], [1]])
def test_edges(sizes: list[int]) -> None:
    assert len(score_items(Device(), _items(sizes))) == len(sizes)
