"""The broker-neutral edge of the worker: what a transport adapter must provide.

A *Source* hands out bounded batches of `Message`s and later acknowledges the ones the
pipeline finished; a *Sink* publishes keyed records and returns futures. The pipeline
steps see only these types, so Kafka, Pub/Sub and Kinesis are one adapter each
(`consumers/transports/kafka.py`, `pubsub.py`, `kinesis.py`), and each adapter is the only
module that imports its SDK.

Rules every adapter follows:
- Acking is the last step of the pipeline and is never done inside an adapter on its own
  initiative: `Source.ack` is called only once the verdict (or the dead letter) of that
  message was confirmed by the Sink.
- `Sink.publish` futures fail on partial success (Kinesis FailedRecordCount, a failed
  Pub/Sub publish future, a Kafka delivery error); nothing is fire-and-forget.
- SDK errors are mapped into `services.errors` in one place per adapter.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AckToken",
    "Destination",
    "Message",
    "MessageRejected",
    "OutRecord",
    "Sink",
    "Source",
]

#: Opaque, hashable identity of a consumed message, meaningful only to its Source
#: (Kafka: (topic, partition, offset); Pub/Sub: ack_id; Kinesis: (shard, sequence)).
AckToken = Hashable

#: Where a record goes: the tenant's verdicts, its dead letters or a retry tier; "arrivals"
#: is the platform side (`audioguard publish`, the demo, replayed dead letters).
Destination = Literal["arrivals", "verdicts", "dlq", "retry"]


class MessageRejected(Exception):  # noqa: N818 - the name Arroyo and Kafka users know
    """A step is full. The caller keeps the message, pauses its source, and tries again.

    This is the backpressure path: it never means the message failed.
    """


@dataclass(frozen=True)
class Message:
    """One consumed record plus what is needed to ack it and to dead-letter it faithfully."""

    token: AckToken
    tenant: str
    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: broker timestamp of the record, seconds since the epoch, when the transport has one
    timestamp: float | None = None
    #: transport coordinates for the dead-letter record (partition/offset, ack_id, shard/sequence)
    coordinates: Mapping[str, object] = field(default_factory=dict)
    #: how many times the transport has delivered this message (Pub/Sub delivery_attempt; else 1)
    delivery_attempt: int = 1
    received_at: float = field(default_factory=time.time)
    #: (reason, detail) when the transport already knows it must be dead-lettered: a
    #: shared-topic record whose tenant is not proven (consumers.tenancy.SharedTopic)
    rejection: tuple[str, str] | None = None

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class OutRecord:
    """A record for a tenant's destination; the adapter maps (tenant, destination) to a topic."""

    tenant: str
    destination: Destination
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    #: retry tier index, only for destination == "retry"
    tier: int | None = None
    #: Pub/Sub ordering key / Kinesis partition key; defaults to `key`
    ordering_key: str | None = None


class Source(ABC):
    """Consumes arrivals for a set of tenants.

    `poll` must be called regularly even while everything is paused: on Kafka that is
    what keeps the consumer in its group (max.poll.interval.ms).
    """

    @abstractmethod
    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Return up to `max_messages` messages, waiting at most `timeout` seconds. Never raises
        for an empty poll; raises `FatalError` when the transport cannot go on."""

    @abstractmethod
    def pause(self, tenants: Iterable[str]) -> None:
        """Stop delivering messages of these tenants until `resume`. Idempotent."""

    @abstractmethod
    def resume(self, tenants: Iterable[str]) -> None:
        """Deliver these tenants' messages again. Idempotent."""

    @abstractmethod
    def ack(self, tokens: Sequence[AckToken]) -> None:
        """Mark these messages finished (verdict or dead letter durably written). The adapter
        makes it durable in its own terms: Kafka commits only across a contiguous run of
        finished offsets per partition; Pub/Sub acks; Kinesis checkpoints."""

    @abstractmethod
    def close(self, timeout: float) -> None:
        """Commit what is finished and leave, within `timeout` seconds."""

    def paused(self) -> frozenset[str]:
        """Tenants currently paused (for metrics and tests)."""
        return frozenset()

    def ready(self) -> bool:
        """Connected and holding something to consume (Kafka: partitions assigned)."""
        return True

    def drop(self, tokens: Sequence[AckToken]) -> None:  # noqa: B027 - optional hook
        """Forget these in-flight messages without acking them (revoked partitions, shutdown
        abandon). They will be delivered again. Default: nothing to forget."""


class Sink(ABC):
    """Publishes records; every publish is confirmed or failed through its future."""

    @abstractmethod
    def publish(self, record: OutRecord) -> Future[None]:
        """Queue `record`; the future resolves when the broker confirmed it, or fails with
        `RetryableError` / `FatalError`. May raise `MessageRejected` when its buffer is full."""

    @abstractmethod
    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""

    @abstractmethod
    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for outstanding records; returns how many remain."""

    def close(self, timeout: float) -> None:
        self.flush(timeout)
