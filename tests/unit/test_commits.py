"""The contiguous-commit tracker never commits past an unfinished offset."""

from __future__ import annotations

import random

from consumers.commits import OffsetTracker

P = ("topic", 0)


def test_commit_waits_for_the_lowest_unfinished_offset():
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add(P, offset)
    tracker.finish(P, 1)
    tracker.finish(P, 2)
    assert tracker.committable() == {}
    tracker.finish(P, 0)
    assert tracker.committable() == {P: 3}
    tracker.mark_committed({P: 3})
    assert tracker.committable() == {}
    tracker.finish(P, 4)
    assert tracker.committable() == {}
    tracker.finish(P, 3)
    assert tracker.committable() == {P: 5}


def test_partitions_are_independent():
    tracker = OffsetTracker()
    other = ("topic", 1)
    tracker.add(P, 10)
    tracker.add(other, 7)
    tracker.finish(other, 7)
    assert tracker.committable() == {other: 8}


def test_revoked_partition_is_forgotten_and_late_acks_ignored():
    tracker = OffsetTracker()
    tracker.add(P, 0)
    tracker.forget(P)
    tracker.finish(P, 0)
    assert tracker.committable() == {}
    assert tracker.outstanding() == 0


def test_redelivered_offsets_are_not_double_counted():
    tracker = OffsetTracker()
    tracker.add(P, 0)
    tracker.add(P, 0)
    tracker.finish(P, 0)
    assert tracker.committable() == {P: 1}
    assert tracker.outstanding() == 0


def test_random_completion_order_never_commits_past_unfinished():
    rng = random.Random(7)
    tracker = OffsetTracker()
    offsets = list(range(500))
    for o in offsets:
        tracker.add(P, o)
    rng.shuffle(offsets)
    done: set[int] = set()
    for o in offsets:
        tracker.finish(P, o)
        done.add(o)
        commit = tracker.committable().get(P)
        if commit is not None:
            assert all(x in done for x in range(commit))
            tracker.mark_committed({P: commit})
    assert tracker.committable() == {} and tracker.outstanding() == 0
