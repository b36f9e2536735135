"""The lease table's rules that need no server: which shards may be read on a shard graph
(a child only after every parent reached SHARD_END), and a worker's fair share."""

from __future__ import annotations

import pytest

from consumers.transports.kinesis import SHARD_END
from consumers.transports.kinesis_leases import Lease, eligible, fair_share

#     s0 ──split──► s2 ──┐
#      │            s3   ├─merge──► s4
#     s1 ────────────────┘
GRAPH = {"s0": (), "s1": (), "s2": ("s0",), "s3": ("s0",), "s4": ("s2", "s1")}


def leases(finished: set[str] = frozenset(), gone: set[str] = frozenset()) -> dict[str, Lease]:
    return {
        f"k/{shard}": Lease(
            f"k/{shard}", "stream", shard, parents, checkpoint=SHARD_END if shard in finished else "7"
        )
        for shard, parents in GRAPH.items()
        if shard not in gone
    }


def shards(keys: set[str]) -> set[str]:
    return {key.removeprefix("k/") for key in keys}


@pytest.mark.parametrize(
    ("finished", "gone", "readable"),
    [
        (set(), set(), {"s0", "s1"}),  # children wait for their parents
        ({"s0"}, set(), {"s1", "s2", "s3"}),  # a split's children start together
        ({"s0", "s2"}, set(), {"s1", "s3"}),  # a merge waits for *both* parents
        ({"s0", "s1", "s2"}, set(), {"s3", "s4"}),
        ({"s0", "s1", "s2", "s3", "s4"}, set(), set()),  # finished shards are read by nobody
        (set(), {"s0"}, {"s1", "s2", "s3"}),  # a parent aged out of the stream has nothing left
        ({"s1"}, {"s0"}, {"s2", "s3"}),
    ],
)
def test_a_child_shard_is_read_only_after_every_parent_reached_shard_end(
    finished: set[str], gone: set[str], readable: set[str]
) -> None:
    assert shards(eligible(leases(finished, gone))) == readable


def test_the_parent_rule_holds_per_stream() -> None:
    # a shard id repeats across streams: only the child's own stream's parent counts
    table = {
        "a/p": Lease("a/p", "a", "p", checkpoint=SHARD_END),
        "b/p": Lease("b/p", "b", "p", checkpoint="5"),
        "a/c": Lease("a/c", "a", "c", ("p",)),
        "b/c": Lease("b/c", "b", "c", ("p",)),
    }
    assert eligible(table) == {"a/c", "b/p"}


@pytest.mark.parametrize(
    ("count", "owners", "share"), [(8, 1, 8), (8, 3, 3), (8, 2, 4), (0, 3, 0), (2, 3, 1)]
)
def test_a_fair_share_rounds_up_so_every_lease_has_an_owner(count: int, owners: int, share: int) -> None:
    assert fair_share(count, owners) == share
    assert fair_share(count, owners) * owners >= count
