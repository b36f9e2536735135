"""The in-memory transport: a Kafka-shaped broker that lives inside one process.

Unit tests, the conformance suite and the demo run the real worker on it without any
server (the idea of Arroyo's `LocalBroker`: one contract, an in-memory backend that passes
it in milliseconds, a real broker that confirms it).

- `MemoryBroker`: topics of N partitions, records with offsets, consumer groups with
  committed offsets and members. A group's partitions are spread over its members (range
  style: partition p of a topic goes to member p mod n); a partition changes hands only
  after its previous owner let go of it at its next poll (revoke callback, commit), so two
  members never hold one partition at once. Time comes from an injectable clock.
- `MemorySource`: Kafka's conventions (topics `audioguard.arrivals.<tenant>`, tokens
  (topic, partition, offset), partition/offset coordinates); nothing is committed before
  `ack`, and then only across the contiguous run of finished offsets
  (`consumers.commits.OffsetTracker`). What it never committed goes to the group's next
  source once it closed (or `crash`ed).
- `MemorySink`: every publish returns a future that resolves on the sink's next
  `poll` / `flush`, when the record is appended; `fail_next` makes chosen deliveries fail,
  for tests of partial publishes.

The broker is reachable only from its own process (`memory_broker(name)`): a worker in
another process has a broker of its own. This module imports no SDK and does no I/O.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import cast

from consumers.commits import OffsetTracker
from consumers.overflow import Spill, hold_or_spill
from consumers.tenancy import (
    KAFKA_ARRIVALS_PATTERN,
    KAFKA_OVERFLOW_PATTERN,
    SHARED,
    SHARED_ARRIVALS_TOPIC,
    SharedTopic,
    TenantHold,
    kafka_topic,
    shared_topic,
    tenant_of_kafka_topic,
    tenant_of_record,
)
from consumers.transport import AckToken, Message, MessageRejected, OutRecord, Sink, Source
from services.errors import FatalError, RetryableError
from services.settings import Settings

__all__ = [
    "MemoryBroker",
    "MemoryGroupReader",
    "MemorySink",
    "MemorySource",
    "StoredRecord",
    "forget_broker",
    "memory_broker",
    "open_memory",
    "provision_memory",
    "read_memory_topic",
    "register_broker",
]

Partition = tuple[str, int]


@dataclass(frozen=True)
class StoredRecord:
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    #: seconds since the epoch, from the broker's clock when the record was appended
    timestamp: float


class MemoryBroker:
    """Topics, offsets and consumer groups in this process; safe to share between threads."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._topics: dict[str, list[list[StoredRecord]]] = {}
        self._committed: dict[str, dict[Partition, int]] = {}
        #: group -> member -> does it subscribe to this topic?
        self._members: dict[str, dict[str, Callable[[str], bool]]] = {}
        #: group -> partition -> the member holding it now
        self._owners: dict[str, dict[Partition, str]] = {}
        self._spread = itertools.count()
        # one lock for everything; the condition wakes sources waiting in poll
        self._changed = threading.Condition(threading.RLock())

    # -- topics -------------------------------------------------------------------------
    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create `topic`; an existing topic is left as it is (Kafka's TOPIC_ALREADY_EXISTS)."""
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        with self._changed:
            self._topics.setdefault(topic, [[] for _ in range(partitions)])
            self._changed.notify_all()

    def topics(self) -> list[str]:
        with self._changed:
            return sorted(self._topics)

    def partitions(self, topic: str) -> int:
        with self._changed:
            return len(self._log(topic))

    def _log(self, topic: str) -> list[list[StoredRecord]]:
        log = self._topics.get(topic)
        if log is None:
            raise FatalError("missing_topic", f"topic {topic} does not exist")
        return log

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> tuple[int, int]:
        """Append a record; returns (partition, offset). Keyed records of one key always land
        in one partition (so they stay in order), unkeyed ones are spread round robin."""
        with self._changed:
            log = self._log(topic)
            if partition is None:
                partition = zlib.crc32(key) % len(log) if key else next(self._spread) % len(log)
            records = log[partition]
            records.append(StoredRecord(key, value, tuple(headers), self.clock()))
            self._changed.notify_all()
            return partition, len(records) - 1

    def read(self, topic: str, partition: int, start: int, limit: int) -> list[StoredRecord]:
        with self._changed:
            return self._log(topic)[partition][start : start + max(0, limit)]

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record of this partition will get (Kafka's high watermark)."""
        with self._changed:
            return len(self._log(topic)[partition])

    def wait(self, timeout: float) -> None:
        """Block until something is produced, created or released, or `timeout` passes."""
        if timeout > 0:
            with self._changed:
                self._changed.wait(timeout)

    # -- consumer groups ----------------------------------------------------------------
    def committed(self, group: str) -> dict[Partition, int]:
        """The group's committed offsets: partition -> next offset to consume."""
        with self._changed:
            return dict(self._committed.get(group, {}))

    def commit(self, group: str, offsets: dict[Partition, int]) -> None:
        with self._changed:
            self._committed.setdefault(group, {}).update(offsets)

    def join(self, group: str, member: str, subscribes: Callable[[str], bool]) -> None:
        with self._changed:
            self._members.setdefault(group, {})[member] = subscribes
            self._changed.notify_all()

    def leave(self, group: str, member: str) -> None:
        """The member is gone: its partitions are free for the others at their next poll."""
        with self._changed:
            self._members.get(group, {}).pop(member, None)
            owners = self._owners.get(group, {})
            for partition in [p for p, m in owners.items() if m == member]:
                del owners[partition]
            self._changed.notify_all()

    def assignment(self, group: str, member: str) -> set[Partition]:
        """The partitions `member` should hold now, given the group's members and topics."""
        with self._changed:
            members = self._members.get(group, {})
            wanted: set[Partition] = set()
            for topic, log in self._topics.items():
                candidates = sorted(m for m, subscribes in members.items() if subscribes(topic))
                if member not in candidates:
                    continue
                index = candidates.index(member)
                wanted.update((topic, p) for p in range(len(log)) if p % len(candidates) == index)
            return wanted

    def claim(self, group: str, member: str, partitions: Iterable[Partition]) -> set[Partition]:
        """Take the partitions of `partitions` that nobody holds; returns those taken."""
        with self._changed:
            owners = self._owners.setdefault(group, {})
            taken = {p for p in partitions if owners.get(p) is None}
            for partition in taken:
                owners[partition] = member
            return taken

    def release(self, group: str, member: str, partitions: Iterable[Partition]) -> None:
        with self._changed:
            owners = self._owners.get(group, {})
            for partition in partitions:
                if owners.get(partition) == member:
                    del owners[partition]
            self._changed.notify_all()


# -- the process's brokers, by name (settings.memory.broker) -----------------------------
_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def memory_broker(name: str = "default") -> MemoryBroker:
    """This process's broker called `name`, created on first use."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker()
        return broker


def register_broker(name: str, broker: MemoryBroker) -> MemoryBroker:
    """Make `broker` (e.g. one with a test clock) the one settings naming `name` get."""
    with _brokers_lock:
        _brokers[name] = broker
    return broker


def forget_broker(name: str) -> None:
    with _brokers_lock:
        _brokers.pop(name, None)


# -- source -------------------------------------------------------------------------------
_ARRIVALS_RE = re.compile(KAFKA_ARRIVALS_PATTERN)
_OVERFLOW_RE = re.compile(KAFKA_OVERFLOW_PATTERN)


class MemorySource(Source):
    """Consumes a group's share of the arrivals topics; commits contiguously, on `ack` only."""

    def __init__(
        self,
        broker: MemoryBroker,
        tenants: Sequence[str] = (),
        *,
        group: str = "audioguard-workers",
        member: str | None = None,
        on_revoke: Callable[[list[Partition]], None] | None = None,
        shared: SharedTopic | None = None,
        max_held: int = 500,
        spill_after: int = 100,
    ) -> None:
        self._broker = broker
        self._shared = shared
        # records of paused tenants read from the shared topic (consumers.tenancy.TenantHold);
        # a tenant holding `spill_after` of them spills to its overflow topic
        # (consumers.overflow); past `max_held` held or unacknowledged, the shared topic is
        # not read until they drop below (the last-resort memory bound)
        self._tenant_hold = TenantHold()
        self._max_held = max(1, max_held)
        self._spill = Spill(self._send_spill, spill_after)
        # spilled copies "in the producer": appended and acknowledged at the next poll, so a
        # crash in between loses them as a killed process loses its producer's buffer
        self._spill_queue: deque[tuple[str, Message, Callable[[BaseException | None], None]]] = deque()
        #: the next this many spilled copies fail (for tests)
        self.fail_spills = 0
        self.group = group
        self.member = member or f"memory-{uuid.uuid4().hex[:8]}"
        self._on_revoke = on_revoke
        self._tracker = OffsetTracker()
        self._positions: dict[Partition, int] = {}
        self._paused_tenants: set[str] = set()
        self._closed = False
        # fair between partitions: each poll starts one partition further on
        self._turn = 0
        topics = frozenset(kafka_topic("arrivals", t) for t in tenants)

        def subscribes(topic: str) -> bool:
            if topic == SHARED_ARRIVALS_TOPIC or _OVERFLOW_RE.match(topic):
                return shared is not None
            return topic in topics if topics else bool(_ARRIVALS_RE.match(topic))

        broker.join(group, self.member, subscribes)

    # -- rebalancing (inside poll, as on Kafka) -----------------------------------------
    def _rebalance(self) -> None:
        wanted = self._broker.assignment(self.group, self.member)
        gone = sorted(set(self._positions) - wanted)
        if gone:
            if self._on_revoke is not None:
                # the runner drains or abandons the in-flight work of these partitions
                self._on_revoke(gone)
            self._commit(only=set(gone))
            self._tenant_hold.forget(gone)
            self._spill.forget(gone)
            for partition in gone:
                del self._positions[partition]
                self._tracker.forget(partition)
            self._broker.release(self.group, self.member, gone)
        new = self._broker.claim(self.group, self.member, wanted - set(self._positions))
        if new:
            committed = self._broker.committed(self.group)
            for partition in new:
                # auto.offset.reset=earliest: a partition never committed is read from its start
                self._positions[partition] = committed.get(partition, 0)

    # -- Source -------------------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        if self._closed:
            raise FatalError("source_closed", "poll after close")
        deadline = time.monotonic() + timeout
        while True:
            self._rebalance()
            messages = self._fetch(max_messages)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            self._broker.wait(min(remaining, 0.05))

    def _send_spill(self, topic: str, message: Message, done: Callable[[BaseException | None], None]) -> None:
        self._spill_queue.append((topic, message, done))

    def _deliver_spills(self) -> None:
        """The producer's delivery reports: append the queued copies, then let the commit
        pass the shared offsets of the acknowledged ones."""
        while self._spill_queue:
            topic, message, done = self._spill_queue.popleft()
            if self.fail_spills > 0:
                self.fail_spills -= 1
                done(RetryableError("memory_unavailable", "injected spill failure"))
                continue
            self._broker.create_topic(topic)  # on first use, as on Kafka
            self._broker.produce(topic, message.value, key=message.key, headers=message.headers)
            done(None)
        acknowledged = self._spill.acknowledged()
        for partition, offset in acknowledged:
            if partition in self._positions:
                self._tracker.finish(partition, offset)
        if acknowledged:
            self._commit()
        self._spill.retry()

    def _fetch(self, max_messages: int) -> list[Message]:
        self._deliver_spills()
        # held shared-topic records of tenants resumed since go first, in their order
        messages = cast(list[Message], self._tenant_hold.release(self._paused_tenants, max_messages))
        readable = sorted(
            p for p in self._positions if tenant_of_kafka_topic(p[0]) not in self._paused_tenants
        )
        if not readable:
            return messages
        self._turn = (self._turn + 1) % len(readable)
        order = readable[self._turn :] + readable[: self._turn]
        now = self._broker.clock()
        # round robin, one record per partition per pass, so one busy partition cannot fill a poll
        while len(messages) < max_messages:
            progressed = False
            for topic, partition in order:
                if len(messages) >= max_messages:
                    break
                if topic == SHARED_ARRIVALS_TOPIC and self._hold_is_full():
                    continue
                offset = self._positions[(topic, partition)]
                records = self._broker.read(topic, partition, offset, 1)
                if not records:
                    continue
                record = records[0]
                self._positions[(topic, partition)] = offset + 1
                self._tracker.add((topic, partition), offset)
                tenant, rejection = tenant_of_record(topic, record.headers, record.value, self._shared)
                message = _message(
                    topic, partition, offset, record, cast(str, tenant), received_at=now, rejection=rejection
                )
                progressed = True
                if topic == SHARED_ARRIVALS_TOPIC and tenant in self._paused_tenants:
                    hold_or_spill(self._spill, self._tenant_hold, message)
                    continue
                messages.append(message)
            if not progressed:
                break
        return messages

    def _hold_is_full(self) -> bool:
        return len(self._tenant_hold) >= self._max_held or self._spill.full()

    def spilled(self) -> dict[str, int]:
        """Shared records copied to each tenant's overflow topic and acknowledged."""
        return dict(self._spill.spilled)

    def pause(self, tenants: Iterable[str]) -> None:
        self._paused_tenants |= set(tenants)

    def resume(self, tenants: Iterable[str]) -> None:
        self._paused_tenants -= set(tenants)
        self._spill.stop(tenants)

    def paused(self) -> frozenset[str]:
        return frozenset(self._paused_tenants)

    def ready(self) -> bool:
        return bool(self._positions)

    def assigned(self) -> frozenset[Partition]:
        return frozenset(self._positions)

    def ack(self, tokens: Sequence[AckToken]) -> None:
        for token in tokens:
            topic, partition, offset = cast(tuple[str, int, int], token)
            self._tracker.finish((topic, partition), offset)
        self._commit()

    def _commit(self, only: set[Partition] | None = None) -> None:
        offsets = cast(dict[Partition, int], self._tracker.committable())
        offsets = {p: o for p, o in offsets.items() if p in self._positions and (only is None or p in only)}
        if offsets:
            self._broker.commit(self.group, offsets)
            self._tracker.mark_committed(dict(offsets))

    def outstanding(self) -> int:
        return self._tracker.outstanding()

    def lag(self) -> dict[Partition, int]:
        """Records not yet handed out, per held partition (high watermark - position)."""
        return {p: max(0, self._broker.end_offset(*p) - pos) for p, pos in self._positions.items()}

    def close(self, timeout: float) -> None:
        if self._closed:
            return
        try:
            self._commit()
        finally:
            self._leave()

    def crash(self) -> None:
        """Leave without committing, as a killed process would: every message not committed
        yet goes to the group's next source."""
        self._leave()

    def _leave(self) -> None:
        self._closed = True
        self._tenant_hold.forget(list(self._positions))
        self._spill_queue.clear()
        self._spill.forget(list(self._positions))
        self._positions.clear()
        self._broker.leave(self.group, self.member)


# -- sink ---------------------------------------------------------------------------------
def _message(
    topic: str,
    partition: int,
    offset: int,
    record: StoredRecord,
    tenant: str,
    received_at: float | None = None,
    rejection: tuple[str, str] | None = None,
) -> Message:
    """The Kafka-shaped Message of one stored record (the same token and coordinates as Kafka's)."""
    return Message(
        token=(topic, partition, offset),
        tenant=tenant,
        topic=topic,
        value=record.value,
        key=record.key,
        headers=record.headers,
        timestamp=record.timestamp,
        coordinates={"partition": partition, "offset": offset, "timestamp_ms": int(record.timestamp * 1000)},
        received_at=time.time() if received_at is None else received_at,
        rejection=rejection,
    )


@dataclass
class _Failure:
    error: BaseException
    matches: Callable[[OutRecord], bool]


class MemorySink(Sink):
    """Appends records to the broker's topics on `poll` / `flush` and resolves their futures."""

    def __init__(self, broker: MemoryBroker, *, max_outstanding: int = 10_000) -> None:
        self._broker = broker
        self._max_outstanding = max_outstanding
        self._queued: deque[tuple[OutRecord, Future[None]]] = deque()
        self._failures: deque[_Failure] = deque()
        self._lock = threading.Lock()
        #: records appended so far (for tests)
        self.delivered = 0

    def fail_next(
        self,
        count: int = 1,
        error: BaseException | None = None,
        *,
        where: Callable[[OutRecord], bool] | None = None,
    ) -> None:
        """The next `count` deliveries (of records matching `where`, default all) fail with
        `error` (default a RetryableError) and are not appended."""
        with self._lock:
            for _ in range(count):
                self._failures.append(
                    _Failure(
                        error
                        if error is not None
                        else RetryableError("memory_unavailable", "injected failure"),
                        where or (lambda _record: True),
                    )
                )

    def publish(self, record: OutRecord) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if len(self._queued) >= self._max_outstanding:
                raise MessageRejected("memory sink buffer full")
            self._queued.append((record, future))
        return future

    def poll(self) -> None:
        while True:
            with self._lock:
                if not self._queued:
                    return
                record, future = self._queued.popleft()
                failure = next((f for f in self._failures if f.matches(record)), None)
                if failure is not None:
                    self._failures.remove(failure)
            if failure is not None:
                future.set_exception(failure.error)
                continue
            topic = kafka_topic(record.destination, record.tenant, record.tier)
            if record.destination == "retry":
                # retry topics are created on first use, as on Kafka
                self._broker.create_topic(topic)
            try:
                self._broker.produce(topic, record.value, key=record.key, headers=record.headers)
            except FatalError as error:
                future.set_exception(error)
                continue
            self.delivered += 1
            future.set_result(None)

    def flush(self, timeout: float) -> int:
        self.poll()
        with self._lock:
            return len(self._queued)


# -- provisioning and reading back ------------------------------------------------------
def provision_memory(settings: Settings, tenants: Iterable[str], partitions: int = 1) -> None:
    broker = memory_broker(settings.memory.broker)
    for tenant in tenants:
        for kind in ("arrivals", "verdicts", "dlq"):
            broker.create_topic(kafka_topic(kind, tenant), partitions)
    if settings.shared_tenants:
        for tenant in settings.shared_tenants:
            for kind in ("verdicts", "dlq"):
                broker.create_topic(kafka_topic(kind, tenant), partitions)
        for kind in ("arrivals", "dlq"):
            broker.create_topic(kafka_topic(kind, SHARED), partitions)


def open_memory(
    settings: Settings,
    *,
    broker: MemoryBroker | None = None,
    on_revoke: Callable[[list[Partition]], None] | None = None,
    member: str | None = None,
) -> tuple[MemorySource, MemorySink]:
    """The worker's source and sink on the broker named by `settings.memory.broker` (or `broker`).
    `member` (default: the worker id and a random suffix) orders the group's members, so
    it decides which partitions this source gets."""
    broker = broker or memory_broker(settings.memory.broker)
    source = MemorySource(
        broker,
        settings.tenants,
        group=settings.memory.group_id,
        member=member or f"{settings.worker_id}-{uuid.uuid4().hex[:6]}",
        on_revoke=on_revoke,
        shared=shared_topic(settings.shared_tenants, settings.tenant_secrets),
        max_held=settings.max_held_events,
        spill_after=settings.shared_spill_after,
    )
    return source, MemorySink(broker)


def read_memory_topic(
    broker: MemoryBroker,
    topic: str,
    *,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """(key, value, headers) of every record of `topic` from the beginning, partition after
    partition; with `follow`, then each new record until `stop()` returns True."""
    positions = [0] * broker.partitions(topic)
    while True:
        got = False
        for partition, start in enumerate(positions):
            records = broker.read(topic, partition, start, 1000)
            positions[partition] = start + len(records)
            got = got or bool(records)
            for record in records:
                yield record.key, record.value, list(record.headers)
        if got:
            continue
        if not follow or (stop is not None and stop()):
            return
        broker.wait(0.1)


class MemoryGroupReader:
    """The records of `topic` a consumer group has not committed yet (or all, `from_beginning`),
    up to the end of each partition; commits only the offsets it is handed. Never joins the
    group. The shape of `consumers.transports.kafka.GroupReader`, for the DLQ tool."""

    def __init__(
        self, broker: MemoryBroker, topic: str, group_id: str, *, from_beginning: bool = False
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._group = group_id
        self._from_beginning = from_beginning
        self.committed_at_start: dict[int, int] = {}

    def records(self, timeout: float = 60.0) -> Iterator[Message]:
        partitions = self._broker.partitions(self._topic)
        committed = self._broker.committed(self._group)
        self.committed_at_start = {p: committed.get((self._topic, p), -1) for p in range(partitions)}
        tenant = tenant_of_kafka_topic(self._topic) or ""
        for partition in range(partitions):
            mark = self.committed_at_start[partition]
            start = 0 if self._from_beginning or mark < 0 else mark
            end = self._broker.end_offset(self._topic, partition)
            for offset, record in enumerate(
                self._broker.read(self._topic, partition, start, end - start), start=start
            ):
                yield _message(self._topic, partition, offset, record, tenant)

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit partition -> next offset to read."""
        if offsets:
            self._broker.commit(self._group, {(self._topic, p): o for p, o in offsets.items()})

    def close(self) -> None:
        """Nothing to disconnect."""
