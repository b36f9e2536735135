"""BatchSizeTuner: the batch cap follows measured model speed, never above the ceiling."""

from __future__ import annotations

import math
import random

import pytest

from consumers.batching import BatchSizeTuner


def drive(tuner: BatchSizeTuner, speed, batches: int = 400, noise: float = 0.1, seed: int = 0) -> list[int]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    caps = []
    for _ in range(batches):
        cap = tuner.current
        rate = speed(cap) * rng.uniform(1 - noise, 1 + noise)
        tuner.observe(cap, cap / rate)
        caps.append(tuner.current)
    return caps


# measured on the 2-core CI machine (windows/s by batch size): best at 8, slower at 32+
CPU = {1: 115, 2: 105, 4: 168, 8: 237, 16: 203, 32: 155, 64: 125, 128: 136}


@pytest.mark.parametrize("ceiling", [32, 128])
def test_settles_on_the_fastest_size_of_a_cpu_like_curve(ceiling: int):
    caps = drive(BatchSizeTuner(ceiling), CPU.__getitem__)
    assert caps[-1] == 8
    assert max(caps) <= ceiling


def test_a_gpu_like_curve_stays_at_the_ceiling():
    caps = drive(BatchSizeTuner(128), lambda b: 100 * b / (1 + b / 64), batches=600)
    # one sweep down at the start, then it stays (a look at 64 every explore_every batches)
    assert caps[-1] == 128 and caps[-300:].count(128) >= 270


def test_partial_batches_teach_nothing():
    tuner = BatchSizeTuner(32, samples=2)
    for _ in range(50):
        assert tuner.observe(3, 0.001) == 32  # deadline-released small batches: no move
    assert tuner.measured == {}


def test_re_explores_after_the_machine_changes():
    tuner = BatchSizeTuner(32, samples=3, min_windows=1, explore_every=60)
    drive(tuner, CPU.__getitem__, batches=200)
    assert tuner.current == 8
    # now bigger batches are much faster (say the other load went away on a GPU)
    caps = drive(tuner, lambda b: 100 * b, batches=400)
    assert caps[-1] == 32


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        BatchSizeTuner(0)
    with pytest.raises(ValueError):
        BatchSizeTuner(8, floor=16)
    assert BatchSizeTuner(24).sizes == [1, 2, 4, 8, 16, 24]


def test_small_sizes_are_measured_over_enough_windows():
    # six one-window batches are milliseconds of work: one hiccup would decide the size
    tuner = BatchSizeTuner(4, samples=2, min_windows=16)
    sizes = []
    for _ in range(28):
        sizes.append(tuner.current)
        tuner.observe(tuner.current, tuner.current / 100.0)
    # the sweep from the ceiling down: 4 batches of 4, 8 of 2, 16 of 1 (16 windows each)
    assert sizes == [4] * 4 + [2] * 8 + [1] * 16
    assert tuner.rate(1) == pytest.approx(100.0)


def test_among_sizes_equally_fast_it_keeps_the_largest():
    # the forward alone is as fast per window at 4 as at 32 (within noise); each batch also
    # costs the loop a turn, so the largest of the equals is what the pipeline wants
    caps = drive(BatchSizeTuner(32), lambda b: 250.0, batches=300, noise=0.05)
    assert caps[-1] == 32


def test_a_nearly_free_scorer_gets_the_largest_cap_once_the_batch_overhead_counts():
    """A forward of microseconds, a little cheaper per window in small batches: on its own
    timing the tuner settles on a small cap, which costs the loop a turn per upload or two;
    counted with the per-batch overhead, the largest cap is the fastest by far."""

    def seconds(batch: int) -> float:
        return 1e-6 * batch * (1 + 0.1 * math.log2(batch))

    assert drive(BatchSizeTuner(32), lambda b: b / seconds(b))[-1] < 32
    caps = drive(BatchSizeTuner(32, overhead_seconds=0.005), lambda b: b / seconds(b))
    assert caps[-1] == 32
