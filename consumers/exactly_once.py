"""Exactly-once mode on Kafka: verdicts and consumed offsets committed in one transaction.

`TransactionalCommit` replaces the `Publish -> Commit` tail of the chain when
`settings.kafka.exactly_once` is on. Finished work (a verdict, a republished duplicate,
a dead letter or a retry record) waits here until its offset is part of a *contiguous*
finished run of its partition. Each round then opens a transaction, produces exactly
those records, adds the offsets just past the run (`send_offsets_to_transaction`) and
commits. A `read_committed` reader therefore sees a record only together with the offset
commit that retires its arrival: after a crash the arrival is re-read only if its
transaction was aborted, and then none of its records were ever visible. Records of work
that finished out of order wait for the earlier offsets instead of being produced early,
which is what keeps a crash from exposing a verdict whose offset was not committed.

The sink's transactional id is `<group>.<worker_id>`: a restarted worker with the same
id fences its predecessor's open transaction at `init_transactions`.

This module never imports the Kafka client (the adapter wraps the calls) and never acks
through `Source.ack`: in this mode consumer-side commits would break the atomicity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from consumers.ports import InFlightLedger
from consumers.steps import Step
from consumers.transport import AckToken, MessageRejected, OutRecord
from consumers.work import Work
from services.errors import FatalError, RetryableError

if TYPE_CHECKING:
    from concurrent.futures import Future


__all__ = ["TransactionalCommit", "TransactionalSink", "TransactionalSource"]

log = logging.getLogger("audioguard.exactly_once")

Partition = tuple[str, int]


@runtime_checkable
class TransactionalSource(Protocol):
    def finish(self, tokens: list[AckToken]) -> dict[Partition, int]: ...
    def mark_committed(self, offsets: dict[Partition, int]) -> None: ...
    def group_metadata(self) -> Any: ...
    def assigned(self) -> frozenset[Partition]: ...


@runtime_checkable
class TransactionalSink(Protocol):
    def publish(self, record: OutRecord) -> Future[None]: ...
    def begin_transaction(self) -> None: ...
    def commit_transaction(self, offsets: dict[Partition, int], group_metadata: Any) -> None: ...
    def abort_transaction(self) -> None: ...


class TransactionalCommit(Step):
    """Publish + commit in one Kafka transaction per round (see the module docstring).

    `submit` never blocks; `poll` runs a round at most every `interval` seconds (sooner when
    `max_round` items are waiting). A failed round is aborted and retried with backoff; after
    `max_failures` failed rounds in a row the worker stops (FatalError) rather than spin.
    """

    def __init__(
        self,
        source: TransactionalSource,
        sink: TransactionalSink,
        in_flight: InFlightLedger,
        *,
        on_done: Callable[[Work], None] | None = None,
        interval: float = 0.1,
        max_round: int = 200,
        max_failures: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._sink = sink
        self._in_flight = in_flight
        self._on_done = on_done
        self._interval = interval
        self._max_round = max_round
        self._max_failures = max_failures
        self._clock = clock
        self._finished: dict[Hashable, Work] = {}
        # offsets computed but not yet committed (a failed round carries them over)
        self._carry: dict[Partition, int] = {}
        self._last_round = clock()
        self._failures = 0
        self._not_before = 0.0
        self.transactions = 0
        self.acked = 0

    def submit(self, work: Work) -> None:
        self._finished[work.message.token] = work

    def poll(self) -> None:
        now = self._clock()
        if not self._finished and not self._carry:
            return
        if now < self._not_before:
            return
        if now - self._last_round < self._interval and len(self._finished) < self._max_round:
            return
        self._last_round = now
        self._round()

    def _round(self) -> None:
        # work of a partition revoked while it was in flight belongs to the next owner now
        assigned = self._source.assigned()
        self.abandon({partition_of(t) for t in self._finished if partition_of(t) not in assigned})
        new = self._source.finish(list(self._finished))
        offsets = {**self._carry, **new}
        if not offsets:
            return
        included = [
            work
            for token, work in self._finished.items()
            if partition_of(token) in offsets and token_offset(token) < offsets[partition_of(token)]
        ]
        try:
            self._sink.begin_transaction()
            for work in included:
                if work.record is not None:
                    self._sink.publish(work.record)
            self._sink.commit_transaction(offsets, self._source.group_metadata())
        except (RetryableError, MessageRejected) as error:
            self._failed(offsets, error)
            return
        self._failures = 0
        self._carry = {}
        self._source.mark_committed(offsets)
        self.transactions += 1
        for work in included:
            del self._finished[work.message.token]
            self._in_flight.release(work.tenant, work.duration_seconds)
            if self._on_done is not None:
                self._on_done(work)
        self.acked += len(included)

    def _failed(self, offsets: dict[Partition, int], error: BaseException) -> None:
        self._carry = offsets
        self._failures += 1
        try:
            self._sink.abort_transaction()
        except RetryableError as abort_error:
            log.warning("abort failed", extra={"error": str(abort_error)})
        if self._failures >= self._max_failures:
            raise FatalError(
                "transaction_failed", f"{self._failures} transactions in a row failed; last: {error}"
            )
        delay = min(5.0, 0.1 * 2 ** (self._failures - 1))
        self._not_before = self._clock() + delay
        log.warning("transaction aborted; retrying", extra={"error": str(error), "attempt": self._failures})

    def abandon(self, partitions: Iterable[Partition]) -> None:
        """Revoked partitions: forget their finished work (its next owner redoes it; the
        verdict store makes that the same verdict) and release its admission."""
        gone = set(partitions)
        for token, work in list(self._finished.items()):
            if partition_of(token) in gone:
                del self._finished[token]
                self._in_flight.release(work.tenant, work.duration_seconds)
        self._carry = {k: v for k, v in self._carry.items() if k not in gone}

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else self._clock() + timeout
        while self._finished and (deadline is None or self._clock() < deadline):
            self._last_round = -1e18
            self._not_before = 0.0
            before = len(self._finished)
            self._round()
            if len(self._finished) == before:
                return

    def pending(self) -> int:
        return len(self._finished)


def token_offset(token: AckToken) -> int:
    return cast(tuple[str, int, int], token)[2]


def partition_of(token: AckToken) -> Partition:
    topic, partition, _ = cast(tuple[str, int, int], token)
    return topic, partition
