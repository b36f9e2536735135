"""The micro-batcher's bounds, deadline and fairness, driven by a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest

from consumers.batching import BatchPolicy, MicroBatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(max_windows: int = 8, max_seconds: float = 1000.0, wait: float = 0.05, **kw):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    return MicroBatcher(BatchPolicy(max_windows, max_seconds, wait), clock=clock, **kw), clock


def test_not_ready_until_full_or_deadline():
    batcher, clock = make(max_windows=8, wait=0.05)
    assert not batcher.ready() and batcher.deadline() is None
    batcher.add("a", "x1", windows=3, seconds=12)
    assert not batcher.ready()
    assert batcher.deadline() == pytest.approx(100.05)
    clock.now += 0.049
    assert not batcher.ready()
    clock.now += 0.002
    assert batcher.ready()
    assert batcher.take() == ["x1"]
    assert len(batcher) == 0 and not batcher.ready()


def test_deadline_starts_with_the_first_queued_item_not_the_last():
    batcher, clock = make(wait=0.05)
    batcher.add("a", 1, windows=1, seconds=1)
    clock.now += 0.04
    batcher.add("a", 2, windows=1, seconds=1)
    clock.now += 0.011
    assert batcher.ready()


def test_ready_when_window_bound_reached_and_batch_respects_it():
    batcher, _ = make(max_windows=8)
    for i in range(5):
        batcher.add("a", i, windows=3, seconds=12)
    assert batcher.ready()
    first = batcher.take()
    assert first == [0, 1]  # 6 windows; a third item (9) would pass the bound
    assert batcher.take() == [2, 3]
    assert batcher.take() == [4]


def test_audio_seconds_bound():
    batcher, _ = make(max_windows=100, max_seconds=10)
    for i in range(4):
        batcher.add("a", i, windows=1, seconds=4)
    assert batcher.ready()
    assert batcher.take() == [0, 1]


def test_an_item_larger_than_the_bound_rides_alone():
    batcher, _ = make(max_windows=4)
    batcher.add("a", "big", windows=10, seconds=40)
    batcher.add("a", "small", windows=1, seconds=4)
    assert batcher.take() == ["big"]
    assert batcher.take() == ["small"]


def test_priority_first_within_a_tenant_then_arrival_order():
    batcher, _ = make(max_windows=100)
    batcher.add("a", "low1", windows=1, seconds=1, priority=0)
    batcher.add("a", "high", windows=1, seconds=1, priority=5)
    batcher.add("a", "low2", windows=1, seconds=1, priority=0)
    assert batcher.take() == ["high", "low1", "low2"]


def test_deep_backlog_cannot_starve_a_trickle():
    batcher, _ = make(max_windows=8)
    for i in range(200):
        batcher.add("flood", f"f{i}", windows=1, seconds=4)
    batcher.add("trickle", "t0", windows=1, seconds=4)
    batch = batcher.take()
    assert "t0" in batch and len(batch) == 8


def test_weighted_shares_under_contention():
    weights = {"a": 3.0, "b": 1.0}
    batcher, _ = make(max_windows=8, weight=lambda t: weights[t])
    for i in range(400):
        batcher.add("a", ("a", i), windows=1, seconds=1)
        batcher.add("b", ("b", i), windows=1, seconds=1)
    counts: Counter[str] = Counter()
    for _ in range(40):
        counts.update(tenant for tenant, _ in batcher.take())
    share = counts["a"] / (counts["a"] + counts["b"])
    assert 0.70 <= share <= 0.80, counts


def test_equal_weights_share_evenly_across_many_batches():
    batcher, _ = make(max_windows=10)
    for tenant in "abc":
        for _i in range(300):
            batcher.add(tenant, tenant, windows=1, seconds=1)
    counts: Counter[str] = Counter()
    for _ in range(60):
        counts.update(batcher.take())
    assert max(counts.values()) - min(counts.values()) <= 10, counts


def test_invalid_policy_is_refused():
    with pytest.raises(ValueError):
        BatchPolicy(max_windows=0)
