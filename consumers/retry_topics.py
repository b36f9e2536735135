"""Kafka retry topics with tiered backoff: `audioguard.retry.<tier>.<tenant>`.

An arrival that still fails with a `RetryableError` after the in-place retries
(`services.retry`) is not dead-lettered at once. It is re-published, payload and key
unchanged, to the tenant's next retry tier, with headers saying when it may run again:

    ag-retry-attempt      the delivery attempt the retried message will be (2, 3, ...)
    ag-retry-tier         the tier it was written to (0-based index into tier_delays_seconds)
    ag-retry-due          epoch seconds before which it must not be processed
    ag-retry-first-seen   epoch seconds when a worker first saw the arrival
    ag-retry-origin       JSON {topic, partition, offset, timestamp_ms} of the original arrival
    ag-retry-reason       the reason code of the last failure (for dashboards; never parsed)

The original is acked only after that publish is confirmed (the retry record travels the
same Publish -> Commit path as a verdict). A message failing on the last tier goes to the
DLQ as ``retries_exhausted`` with the original coordinates and first-seen time.

Consuming: the worker subscribes to its tenants' retry topics next to the arrivals
(`subscription`). `RetryGate` decides, for each record read from a retry topic, whether
it is due. A record that is not due makes the adapter pause that partition and seek back
to it; `RetryGate.due_partitions` hands the partition back once its due time passed. So a
retry partition is never busy-polled and never delivered early, and the consumer keeps
polling (and stays in its group) while it waits. Within a tier every record has the same
delay, so due times grow along a partition: waiting on the head is never head-of-line
blocking of a record that is already due.

The tenant of a retry record is the tenant in its topic name, exactly as for arrivals.
This module is pure bookkeeping: it never imports the Kafka client and never sleeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

from consumers.tenancy import kafka_topic
from consumers.transport import Message, OutRecord

__all__ = [
    "ATTEMPT_HEADER",
    "DUE_HEADER",
    "FIRST_SEEN_HEADER",
    "ORIGIN_HEADER",
    "REASON_HEADER",
    "RETRY_HEADER_PREFIX",
    "RETRY_PATTERN",
    "TIER_HEADER",
    "RetryGate",
    "RetryPolicy",
    "is_retry_topic",
    "original_message",
    "retry_record",
    "retry_state",
    "retry_topics",
]

RETRY_HEADER_PREFIX = "ag-retry-"
ATTEMPT_HEADER = "ag-retry-attempt"
TIER_HEADER = "ag-retry-tier"
DUE_HEADER = "ag-retry-due"
FIRST_SEEN_HEADER = "ag-retry-first-seen"
ORIGIN_HEADER = "ag-retry-origin"
REASON_HEADER = "ag-retry-reason"

#: librdkafka regex subscription for every tenant's retry tiers
RETRY_PATTERN = r"^audioguard\.retry\.[0-9]+\.[a-z0-9-]{1,40}$"


@dataclass(frozen=True)
class RetryPolicy:
    """Delays of the retry tiers, in seconds; after the last tier a message is dead-lettered."""

    tier_delays_seconds: tuple[float, ...] = (10.0, 60.0, 600.0)

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.tier_delays_seconds):
            raise ValueError("retry tier delays must be >= 0")

    @property
    def tiers(self) -> int:
        return len(self.tier_delays_seconds)


@dataclass(frozen=True)
class RetryState:
    """What a message's retry headers say (a first delivery: attempt 1, tier None)."""

    attempt: int
    tier: int | None
    due: float | None
    first_seen: float | None
    origin: dict[str, object] | None


def is_retry_topic(topic: str) -> bool:
    return topic.startswith("audioguard.retry.")


def retry_topics(tenants: Sequence[str], policy: RetryPolicy) -> list[str]:
    return [kafka_topic("retry", t, tier) for t in tenants for tier in range(policy.tiers)]


def _float(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def retry_state(message: Message) -> RetryState:
    """Read the retry headers; garbage in a header reads as absent (never raises)."""
    attempt = _float(message.header(ATTEMPT_HEADER))
    tier = _float(message.header(TIER_HEADER))
    origin: dict[str, object] | None = None
    raw = message.header(ORIGIN_HEADER)
    if raw:
        try:
            parsed = json.loads(raw)
            origin = parsed if isinstance(parsed, dict) else None
        except (UnicodeDecodeError, ValueError):
            origin = None
    return RetryState(
        attempt=max(1, int(attempt)) if attempt is not None else 1,
        tier=int(tier) if tier is not None and is_retry_topic(message.topic) else None,
        due=_float(message.header(DUE_HEADER)),
        first_seen=_float(message.header(FIRST_SEEN_HEADER)),
        origin=origin,
    )


def retry_record(
    message: Message, reason: str, policy: RetryPolicy, *, now: Callable[[], float] = time.time
) -> OutRecord | None:
    """The record for the message's next retry tier, or None when the tiers are used up
    (then the caller dead-letters it as retries_exhausted)."""
    state = retry_state(message)
    tier = 0 if state.tier is None else state.tier + 1
    if tier >= policy.tiers:
        return None
    at = now()
    origin = state.origin or {
        "topic": message.topic,
        "partition": message.coordinates.get("partition"),
        "offset": message.coordinates.get("offset"),
        "timestamp_ms": message.coordinates.get("timestamp_ms"),
    }
    first_seen = state.first_seen if state.first_seen is not None else message.received_at
    kept = [(k, v) for k, v in message.headers if not k.startswith(RETRY_HEADER_PREFIX)]
    headers = kept + [
        (ATTEMPT_HEADER, str(state.attempt + 1).encode()),
        (TIER_HEADER, str(tier).encode()),
        (DUE_HEADER, f"{at + policy.tier_delays_seconds[tier]:.3f}".encode()),
        (FIRST_SEEN_HEADER, f"{first_seen:.3f}".encode()),
        (ORIGIN_HEADER, json.dumps(origin, separators=(",", ":"), sort_keys=True).encode()),
        (REASON_HEADER, reason.encode("utf-8", errors="replace")[:200]),
    ]
    return OutRecord(
        tenant=message.tenant,
        destination="retry",
        tier=tier,
        key=message.key or b"",
        value=message.value,
        headers=tuple(headers),
    )


def original_message(message: Message) -> Message:
    """For a message read from a retry topic: the same message as the original arrival
    (topic, coordinates, timestamp, first-seen time, no retry headers), so its dead letter
    names where the platform published it. Other messages are returned unchanged."""
    if not is_retry_topic(message.topic):
        return message
    state = retry_state(message)
    origin = state.origin or {}
    topic = origin.get("topic")
    ts = origin.get("timestamp_ms")
    coordinates = {k: origin.get(k) for k in ("partition", "offset", "timestamp_ms")}
    return replace(
        message,
        topic=topic if isinstance(topic, str) else message.topic,
        coordinates=coordinates,
        timestamp=ts / 1000 if isinstance(ts, int | float) and ts > 0 else message.timestamp,
        headers=tuple((k, v) for k, v in message.headers if not k.startswith(RETRY_HEADER_PREFIX)),
        received_at=state.first_seen if state.first_seen is not None else message.received_at,
    )


class RetryGate:
    """Which retry partitions are waiting for their head record, and until when.

    `hold(partition, due)` records that the head of `partition` is not due before `due`
    (the adapter has paused the partition and seeked back to the record);
    `due_partitions(now)` returns, and forgets, the partitions whose wait is over.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._waiting: dict[Hashable, float] = {}

    def not_due(self, message_due: float | None) -> bool:
        """True when a record with this due time must not be processed yet."""
        return message_due is not None and message_due > self._clock()

    def hold(self, partition: Hashable, due: float) -> None:
        self._waiting[partition] = due

    def due_partitions(self) -> list[Hashable]:
        now = self._clock()
        ready = [p for p, due in self._waiting.items() if due <= now]
        for partition in ready:
            del self._waiting[partition]
        return ready

    def forget(self, partition: Hashable) -> None:
        self._waiting.pop(partition, None)

    def waiting(self) -> dict[Hashable, float]:
        return dict(self._waiting)

    def next_due(self) -> float | None:
        return min(self._waiting.values(), default=None)
