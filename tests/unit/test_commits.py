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


def test_a_sent_commit_is_not_offered_again_and_a_failed_one_is():
    tracker = OffsetTracker()
    for offset in range(4):
        tracker.add(P, offset)
    tracker.finish(P, 0)
    tracker.finish(P, 1)
    assert tracker.committable() == {P: 2}
    tracker.mark_sent({P: 2})  # an asynchronous commit on its way
    assert tracker.committable() == {}
    # a final synchronous commit covers what is only in flight
    assert tracker.committable(unconfirmed=True) == {P: 2}
    tracker.send_failed({P: 2})
    assert tracker.committable() == {P: 2}, "a failed commit is offered again without a new ack"
    tracker.mark_sent({P: 2})
    tracker.mark_committed({P: 2})
    assert tracker.confirmed(P) == 2
    assert tracker.committable() == {} and tracker.committable(unconfirmed=True) == {}


def test_a_stale_failure_does_not_rewind_a_later_sent_commit():
    tracker = OffsetTracker()
    for offset in range(4):
        tracker.add(P, offset)
    tracker.finish(P, 0)
    tracker.mark_sent(tracker.committable())  # {P: 1}
    tracker.finish(P, 1)
    tracker.finish(P, 2)
    tracker.mark_sent(tracker.committable())  # {P: 3}
    tracker.send_failed({P: 1})  # the first commit's result arrives late
    assert tracker.committable() == {}
    tracker.mark_committed({P: 3})
    assert tracker.confirmed(P) == 3


def test_batched_asynchronous_commits_are_never_ahead_of_a_finished_offset():
    """Commits sent in batches, some failing, results arriving in any order: every offset
    offered or confirmed lies at or below the end of the finished prefix."""
    rng = random.Random(11)
    tracker = OffsetTracker()
    offsets = list(range(400))
    for o in offsets:
        tracker.add(P, o)
    rng.shuffle(offsets)
    done: set[int] = set()
    in_flight: list[dict[object, int]] = []

    def prefix() -> int:
        n = 0
        while n in done:
            n += 1
        return n

    for o in offsets:
        tracker.finish(P, o)
        done.add(o)
        if rng.random() < 0.2:  # a commit turn
            offered = tracker.committable()
            if offered:
                assert offered[P] <= prefix()
                tracker.mark_sent(dict(offered))
                in_flight.append(dict(offered))
        while in_flight and rng.random() < 0.5:  # results, out of order, some failing
            result = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.3:
                tracker.send_failed(result)
            else:
                tracker.mark_committed(result)
                confirmed = tracker.confirmed(P)
                assert confirmed is not None and confirmed <= prefix()
    final = tracker.committable(unconfirmed=True)
    assert final.get(P, tracker.confirmed(P)) == 400
