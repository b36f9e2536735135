"""One `DeadLetterQueue` per transport (Kafka, Pub/Sub, Kinesis, memory), chosen by `settings.transport`.

* Kafka: topic `audioguard.dlq.<tenant>`, read from the tool's own consumer group
  (default `audioguard-dlq-tool`, never the workers'), which is committed past a dead
  letter once it was re-published. `from_beginning` also shows what was replayed before.
* Pub/Sub: subscription `dlq-<tenant>-replay`; pulled messages stay leased while the tool
  runs, are acked once re-published, and are given back (deadline 0) otherwise.
* Kinesis: stream `audioguard-dlq-<tenant>`; the tool's position per shard is a checkpoint
  in the verdict store (`settings.store.url`, application `audioguard-dlq-tool`), so use a
  shared store (redis://, sqlite://) for it to persist between runs. Kinesis records have
  no headers, so the replay count the loop guard reads is kept there too, per idempotency key.
* memory: Kafka's queue on the in-process broker (`consumers.transports.memory`), for tests.

Kafka and Kinesis positions only move forward, so the committed position passes a dead letter
only together with every dead letter before it in its partition / shard: `_Positions` advances
across the contiguous run of removed records and stops at the first one left behind. On
Kafka, a replayed dead letter still behind that position gets a marker record in the DLQ
topic (empty value, header `ag-dlq-tool-replayed: <partition>:<offset>`), so later runs skip
it (except with `from_beginning`) and the committed position passes both once it can. Other
consumers of the DLQ topic should ignore records with that header. On Kinesis a replayed
dead letter stuck behind one left in the queue is listed again by the next run (replaying it
again is harmless: the verdict store answers it).

This module talks to brokers only through the adapter modules and never removes a dead
letter the caller did not hand to `remove`.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, cast

from consumers.tenancy import kafka_topic, kinesis_stream, pubsub_subscription, pubsub_topic
from consumers.transport import Message, OutRecord, Sink
from dlq.envelope import dead_letter_from_record
from dlq.inspect import DeadLetterQueue, DeadLetterRecord
from services.errors import FatalError, PoisonMessage
from services.settings import Settings

__all__ = [
    "DLQ_TOOL_GROUP",
    "REPLAYED_MARK_HEADER",
    "DEAD_LETTER_QUEUES",
    "KafkaDeadLetters",
    "KinesisDeadLetters",
    "MemoryDeadLetters",
    "PubSubDeadLetters",
    "open_dead_letters",
]

#: the Kafka consumer group / Kinesis application of the DLQ tool (never the workers')
DLQ_TOOL_GROUP = "audioguard-dlq-tool"
#: header of the tool's marker record on a Kafka DLQ: "<partition>:<offset>" was replayed
REPLAYED_MARK_HEADER = "ag-dlq-tool-replayed"


def _parts(token: Hashable) -> tuple[str, Any, Any]:
    """(topic or stream, partition or shard, offset or sequence) of a Kafka / Kinesis token."""
    return cast(tuple[str, Any, Any], token)


class _Positions:
    """Per partition: positions in read order, and which were removed; `advance` returns,
    per partition, the last position of the removed prefix that moved since last time."""

    def __init__(self) -> None:
        self._order: dict[Any, list[Any]] = {}
        self._index: dict[tuple[Any, Any], int] = {}
        self._removed: set[tuple[Any, Any]] = set()
        self._done: dict[Any, int] = {}

    def add(self, partition: Any, position: Any) -> None:
        positions = self._order.setdefault(partition, [])
        self._index[(partition, position)] = len(positions)
        positions.append(position)

    def remove(self, partition: Any, position: Any) -> None:
        self._removed.add((partition, position))

    def covered(self, partition: Any, position: Any) -> bool:
        """Is this position inside the removed prefix (so the committed position passed it)?"""
        index = self._index.get((partition, position))
        return index is not None and index < self._done.get(partition, 0)

    def advance(self) -> dict[Any, Any]:
        moved: dict[Any, Any] = {}
        for partition, positions in self._order.items():
            index = self._done.get(partition, 0)
            while index < len(positions) and (partition, positions[index]) in self._removed:
                index += 1
            if index > self._done.get(partition, 0):
                self._done[partition] = index
                moved[partition] = positions[index - 1]
        return moved


def _record(
    queue: DeadLetterQueue, message: Message, ref: str, location: dict[str, object]
) -> DeadLetterRecord | None:
    try:
        envelope, payload = dead_letter_from_record(message.value, message.headers)
    except PoisonMessage:
        queue.unreadable += 1
        return None
    return DeadLetterRecord(
        ref=ref,
        envelope=envelope,
        payload=payload,
        key=message.key,
        headers=message.headers,
        location=location,
        token=message.token,
    )


class _Publishing:
    """Lazily opened publisher shared by the three queues."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sink: Sink | None = None

    def sink(self) -> Sink:
        if self._sink is None:
            from consumers.transports.registry import open_publisher

            self._sink = open_publisher(self._settings)
        return self._sink

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close(30)


class _ToolQueue(DeadLetterQueue):
    """A queue the DLQ tool opens by transport name (`open_dead_letters`)."""

    @classmethod
    @abstractmethod
    def open(cls, settings: Settings, tenant: str, *, group: str, from_beginning: bool) -> DeadLetterQueue:
        """The tenant's queue, read as `group` (consumer group / application)."""


class KafkaDeadLetters(_ToolQueue):
    transport = "kafka"

    def __init__(
        self, settings: Settings, tenant: str, *, group: str = DLQ_TOOL_GROUP, from_beginning: bool = False
    ) -> None:
        super().__init__(tenant)
        self.topic = kafka_topic("dlq", tenant)
        self.group = group
        self._reader = self._open_reader(settings, from_beginning)
        self._from_beginning = from_beginning
        self._positions = _Positions()
        self._publishing = _Publishing(settings)

    @classmethod
    def open(cls, settings: Settings, tenant: str, *, group: str, from_beginning: bool) -> DeadLetterQueue:
        return cls(settings, tenant, group=group, from_beginning=from_beginning)

    def _open_reader(self, settings: Settings, from_beginning: bool) -> Any:
        from consumers.transports.kafka import GroupReader

        return GroupReader(settings.kafka, self.topic, self.group, from_beginning=from_beginning)

    def describe(self) -> str:
        return f"Kafka topic {self.topic}, consumer group {self.group}"

    def read(self) -> Iterator[DeadLetterRecord]:
        # read to the end first: a replay marker comes after the dead letter it names
        messages = list(self._reader.records())
        replayed: set[tuple[int, int]] = set()
        for message in messages:
            _, partition, offset = _parts(message.token)
            self._positions.add(partition, offset)
            mark = message.header(REPLAYED_MARK_HEADER)
            if mark is not None:
                self._positions.remove(partition, offset)  # bookkeeping only: nothing to replay
                with contextlib.suppress(ValueError):
                    where, _, at = mark.decode("ascii").partition(":")
                    replayed.add((int(where), int(at)))
        for message in messages:
            _, partition, offset = _parts(message.token)
            if message.header(REPLAYED_MARK_HEADER) is not None:
                continue
            if (partition, offset) in replayed and not self._from_beginning:
                self._positions.remove(partition, offset)  # replayed by an earlier run
                continue
            location: dict[str, object] = {"topic": self.topic, "partition": partition, "offset": offset}
            record = _record(self, message, f"{partition}:{offset}", location)
            if record is not None:
                yield record

    def destination(self, to: str, tier: int = 0) -> str:
        return (
            kafka_topic("retry", self.tenant, tier)
            if to == "retry-tier"
            else kafka_topic("arrivals", self.tenant)
        )

    def republish(self, record: OutRecord) -> Future[None]:
        return self._publishing.sink().publish(record)

    def flush(self, timeout: float) -> None:
        self._publishing.sink().flush(timeout)

    def remove(self, records: Sequence[DeadLetterRecord]) -> None:
        for record in records:
            _, partition, offset = _parts(record.token)
            self._positions.remove(partition, offset)
        start = self._reader.committed_at_start
        # never move the group backwards (a --from-beginning run re-reads what was removed)
        offsets = {
            int(p): int(o) + 1
            for p, o in self._positions.advance().items()
            if int(o) + 1 > start.get(int(p), -1)
        }
        self._reader.commit(offsets)
        # Removed but stuck behind a dead letter left in the queue: the committed position
        # cannot pass it yet, so a marker record says it was replayed and later reads skip it.
        marks = []
        for record in records:
            _, partition, offset = _parts(record.token)
            if not self._positions.covered(partition, offset):
                marks.append(
                    OutRecord(
                        tenant=self.tenant,
                        destination="dlq",
                        key=f"replayed:{partition}:{offset}".encode(),
                        value=b"",
                        headers=((REPLAYED_MARK_HEADER, f"{partition}:{offset}".encode()),),
                    )
                )
        if marks:
            sink = self._publishing.sink()
            futures = [sink.publish(mark) for mark in marks]
            sink.flush(30)
            for future in futures:
                future.result(30)

    def close(self) -> None:
        try:
            self._publishing.close()
        finally:
            self._reader.close()


class MemoryDeadLetters(KafkaDeadLetters):
    """Kafka's queue, on the in-process broker named by `settings.memory.broker`."""

    transport = "memory"

    def _open_reader(self, settings: Settings, from_beginning: bool) -> Any:
        from consumers.transports.memory import MemoryGroupReader, memory_broker

        broker = memory_broker(settings.memory.broker)
        return MemoryGroupReader(broker, self.topic, self.group, from_beginning=from_beginning)

    def describe(self) -> str:
        return f"in-memory topic {self.topic}, consumer group {self.group}"


class PubSubDeadLetters(_ToolQueue):
    transport = "pubsub"
    #: how long pulled dead letters stay leased to the tool while it works
    LEASE_SECONDS = 600

    def __init__(self, settings: Settings, tenant: str, *, idle: float = 3.0, timeout: float = 60.0) -> None:
        from consumers.transports.pubsub import SubscriptionPuller

        super().__init__(tenant)
        self.subscription = pubsub_subscription(tenant, "dlq")
        self._puller = SubscriptionPuller(settings, self.subscription)
        self._held: dict[str, str] = {}  # ack id -> message id, leased and not acked
        self._idle = idle
        self._timeout = timeout
        self._publishing = _Publishing(settings)

    @classmethod
    def open(cls, settings: Settings, tenant: str, *, group: str, from_beginning: bool) -> DeadLetterQueue:
        if from_beginning:
            raise FatalError("bad_request", "Pub/Sub cannot re-read acked dead letters (no --from-beginning)")
        return cls(settings, tenant)

    def describe(self) -> str:
        return f"Pub/Sub subscription {self.subscription}"

    def read(self) -> Iterator[DeadLetterRecord]:
        seen: set[str] = set()
        started = last = time.monotonic()
        while time.monotonic() - last < self._idle and time.monotonic() - started < self._timeout:
            messages = self._puller.pull(100, timeout=1.0)
            if not messages:
                continue
            last = time.monotonic()
            fresh = []
            for message in messages:
                message_id = str(message.coordinates["message_id"])
                self._held[str(message.token)] = message_id
                if message_id not in seen:
                    seen.add(message_id)
                    fresh.append(message)
            # held for the whole run: a dead letter given back now would come straight back
            self._puller.extend([str(m.token) for m in messages], self.LEASE_SECONDS)
            for message in fresh:
                location: dict[str, object] = {
                    "subscription": self.subscription,
                    "message_id": message.coordinates["message_id"],
                }
                record = _record(self, message, str(message.coordinates["message_id"]), location)
                if record is not None:
                    yield record

    def destination(self, to: str, tier: int = 0) -> str:
        if to == "retry-tier":
            raise FatalError("unsupported_destination", "retry tiers exist only on Kafka")
        return f"Pub/Sub topic {pubsub_topic('arrivals', self.tenant)}"

    def republish(self, record: OutRecord) -> Future[None]:
        return self._publishing.sink().publish(record)

    def flush(self, timeout: float) -> None:
        self._publishing.sink().flush(timeout)

    def remove(self, records: Sequence[DeadLetterRecord]) -> None:
        ids = [str(record.token) for record in records]
        self._puller.ack(ids)
        for ack_id in ids:
            self._held.pop(ack_id, None)

    def close(self) -> None:
        try:
            self._publishing.close()
            if self._held:
                self._puller.release(list(self._held))
        finally:
            self._held.clear()
            self._puller.close()


class KinesisDeadLetters(_ToolQueue):
    transport = "kinesis"

    def __init__(
        self,
        settings: Settings,
        tenant: str,
        *,
        application: str = DLQ_TOOL_GROUP,
        from_beginning: bool = False,
    ) -> None:
        from consumers.transports.kinesis import checkpoint_name
        from services.store import open_store

        super().__init__(tenant)
        self._settings = settings
        self.stream = kinesis_stream("dlq", tenant)
        self.application = application
        self._store = open_store(settings.store.url, settings.store.ttl_seconds)
        self._name: Callable[[str], str] = lambda shard: checkpoint_name(application, self.stream, shard)
        self._from_beginning = from_beginning
        self._positions = _Positions()
        self._publishing = _Publishing(settings)

    @classmethod
    def open(cls, settings: Settings, tenant: str, *, group: str, from_beginning: bool) -> DeadLetterQueue:
        return cls(settings, tenant, application=group, from_beginning=from_beginning)

    def describe(self) -> str:
        return f"Kinesis stream {self.stream}, checkpoints {self.application} in {self._settings.store.url}"

    def read(self) -> Iterator[DeadLetterRecord]:
        from consumers.transports.kinesis import read_shard_records

        def after(shard: str) -> str | None:
            return None if self._from_beginning else self._store.get_checkpoint(self._name(shard))

        for message in read_shard_records(self._settings, self.stream, after):
            _, shard, sequence = _parts(message.token)
            self._positions.add(shard, sequence)
            location: dict[str, object] = {
                "stream": self.stream,
                "shard_id": shard,
                "sequence_number": sequence,
            }
            record = _record(self, message, f"{shard}:{sequence}", location)
            if record is not None:
                yield record

    def destination(self, to: str, tier: int = 0) -> str:
        if to == "retry-tier":
            raise FatalError("unsupported_destination", "retry tiers exist only on Kafka")
        return f"Kinesis stream {kinesis_stream('arrivals', self.tenant)}"

    def republish(self, record: OutRecord) -> Future[None]:
        return self._publishing.sink().publish(record)

    def flush(self, timeout: float) -> None:
        self._publishing.sink().flush(timeout)

    def remove(self, records: Sequence[DeadLetterRecord]) -> None:
        for record in records:
            _, shard, sequence = _parts(record.token)
            self._positions.remove(shard, sequence)
            self._store.set_checkpoint(self._replays_name(record), str(self.replay_count(record) + 1))
        for shard, sequence in self._positions.advance().items():
            current = self._store.get_checkpoint(self._name(str(shard)))
            if current is None or int(sequence) > int(current):
                self._store.set_checkpoint(self._name(str(shard)), str(sequence))

    def _replays_name(self, record: DeadLetterRecord) -> str:
        return f"dlq-replays/{self.stream}/{record.idempotency_key or record.ref}"

    def replay_count(self, record: DeadLetterRecord) -> int:
        # Kinesis records have no headers, so the count cannot travel with the arrival: the
        # tool keeps it per idempotency key in the store, next to its shard positions.
        stored = self._store.get_checkpoint(self._replays_name(record))
        return max(record.envelope.replay_count, int(stored) if stored and stored.isdigit() else 0)

    def close(self) -> None:
        self._publishing.close()


#: the DLQ tool's queue per transport name; the keys are names of consumers.transports.registry
#: (dlq sits above consumers, so this table cannot live there; a test keeps the two in step)
DEAD_LETTER_QUEUES: dict[str, type[_ToolQueue]] = {
    "kafka": KafkaDeadLetters,
    "pubsub": PubSubDeadLetters,
    "kinesis": KinesisDeadLetters,
    "memory": MemoryDeadLetters,
}


def open_dead_letters(
    settings: Settings, tenant: str, *, group: str = DLQ_TOOL_GROUP, from_beginning: bool = False
) -> DeadLetterQueue:
    """The tenant's dead letters on `settings.transport`. On Pub/Sub `from_beginning` is not
    available (an acked message is gone); the others re-read from the start."""
    queue = DEAD_LETTER_QUEUES.get(settings.transport)
    if queue is None:
        raise FatalError("bad_config", f"no dead-letter queue tool for transport {settings.transport!r}")
    return queue.open(settings, tenant, group=group, from_beginning=from_beginning)


def describe_location(record: DeadLetterRecord) -> str:
    return json.dumps(dict(record.location), default=str, sort_keys=True)
