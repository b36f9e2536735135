"""Contiguous-commit tracking: which Kafka offset may be committed per partition.

Messages of one partition finish out of order (a short clip overtakes a long one in the
batcher). The committed offset must never pass an unfinished message, or a crash would
lose it. The tracker records every offset handed out, marks offsets finished, and
reports, per partition, the offset just past the longest finished prefix.

Commits may be asynchronous: `mark_sent` records a commit that is on its way (so the same
point is not sent again on every turn), `mark_committed` one the broker confirmed, and
`send_failed` puts a partition whose commit failed back to its last confirmed point, so the
next `committable` offers it again. Whatever is in flight, an offset offered is never past an
unfinished message.

Pure bookkeeping: no Kafka client, no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["OffsetTracker"]


@dataclass
class _Partition:
    # offsets handed out and not yet finished, as a min-heap with lazy deletion
    pending: list[int] = field(default_factory=list)
    finished: set[int] = field(default_factory=set)
    highest_seen: int = -1
    #: the end of the finished prefix (next offset to read) as far as it is known
    done_upto: int | None = None
    committed: int | None = None  # next offset to read, as last committed or sent
    confirmed: int | None = None  # next offset to read, as the broker last confirmed


class OffsetTracker:
    """Tracks offsets per partition key (e.g. (topic, partition))."""

    def __init__(self) -> None:
        self._partitions: dict[Hashable, _Partition] = {}

    def add(self, partition: Hashable, offset: int) -> None:
        """An offset was handed to the pipeline. Offsets of a partition arrive in order."""
        state = self._partitions.setdefault(partition, _Partition())
        if offset <= state.highest_seen:
            # A re-delivery after seek/rebalance: already tracked, nothing new to wait for.
            return
        state.highest_seen = offset
        heapq.heappush(state.pending, offset)

    def finish(self, partition: Hashable, offset: int) -> None:
        """The message at `offset` is done (verdict or dead letter confirmed). Idempotent;
        finishing an offset of a forgotten (revoked) partition is ignored."""
        state = self._partitions.get(partition)
        if state is not None and offset <= state.highest_seen:
            state.finished.add(offset)

    def committable(self, *, unconfirmed: bool = False) -> dict[Hashable, int]:
        """Partitions whose commit point advanced since `mark_committed` / `mark_sent`
        (`unconfirmed`: since the last confirmed commit, in-flight ones included, for a final
        synchronous commit): partition -> the next offset to consume (Kafka's commit
        convention: last finished + 1)."""
        result: dict[Hashable, int] = {}
        for key, state in self._partitions.items():
            while state.pending and state.pending[0] in state.finished:
                offset = heapq.heappop(state.pending)
                state.finished.discard(offset)
                state.done_upto = offset + 1
            if not state.pending and state.highest_seen >= 0:
                # nothing outstanding: everything seen is done
                state.done_upto = state.highest_seen + 1
            advanced = state.done_upto
            mark = state.confirmed if unconfirmed else state.committed
            if advanced is not None and (mark is None or advanced > mark):
                result[key] = advanced
        return result

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        """The broker confirmed these commit points."""
        for key, offset in offsets.items():
            state = self._partitions.get(key)
            if state is not None:
                state.confirmed = offset if state.confirmed is None else max(state.confirmed, offset)
                state.committed = offset if state.committed is None else max(state.committed, offset)

    def mark_sent(self, offsets: dict[Hashable, int]) -> None:
        """These commit points are on their way (an asynchronous commit): not offered again."""
        for key, offset in offsets.items():
            state = self._partitions.get(key)
            if state is not None:
                state.committed = offset if state.committed is None else max(state.committed, offset)

    def send_failed(self, offsets: dict[Hashable, int]) -> None:
        """A commit of these points failed: offer the partition again from its last confirmed
        point (unless a later commit was sent since, which covers this one)."""
        for key, offset in offsets.items():
            state = self._partitions.get(key)
            if state is not None and state.committed == offset:
                state.committed = state.confirmed

    def confirmed(self, partition: Hashable) -> int | None:
        """The last commit point the broker confirmed for `partition`, or None."""
        state = self._partitions.get(partition)
        return None if state is None else state.confirmed

    def outstanding(self, partition: Hashable | None = None) -> int:
        """How many handed-out offsets are not yet finished (for one partition or all)."""
        states = [self._partitions.get(partition)] if partition is not None else self._partitions.values()
        return sum(len(s.pending) for s in states if s is not None)

    def forget(self, partition: Hashable) -> None:
        """The partition was revoked: its unfinished messages will be delivered to its next owner."""
        self._partitions.pop(partition, None)

    def partitions(self) -> list[Hashable]:
        return list(self._partitions)
