"""Reading a tenant's dead letters, transport-neutrally: what on-call looks at before a replay.

`DeadLetterQueue` is the small interface the `audioguard dlq` tool works against; one
implementation per transport lives in `dlq.queues` and talks to the broker only through the
adapter modules (`consumers.transports.kafka`, `consumers.transports.pubsub`, `consumers.transports.kinesis`):

* `read()` yields every dead letter still in the queue as a `DeadLetterRecord` (envelope,
  original payload, headers, where it sits in the DLQ) and never removes anything;
* `republish(record)` publishes to the tenant's arrivals / retry destination and returns a
  future the broker resolves;
* `remove(records)` takes dead letters off the queue (Kafka: commits the tool's group past
  them, Pub/Sub: acks, Kinesis: checkpoints) and must only be called once their
  re-publication was confirmed.

`DeadLetterFilter` selects records, `stats` summarises them. This module must never import a
broker SDK, never alter a payload, and never remove a dead letter.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consumers.transport import OutRecord
from schemas import DeadLetter

__all__ = [
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DeadLetterRecord",
    "DeadLetterStats",
    "parse_when",
    "stats",
]


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead letter as read from a DLQ.

    ref       what `dlq show` takes: Kafka ``<partition>:<offset>``, Pub/Sub the message id,
              Kinesis ``<shard>:<sequence>``
    envelope  why it failed (`schemas.DeadLetter`)
    payload   the original arrival, byte for byte (only its first bytes when the envelope
              says ``payload_truncated``; `dlq.replay` fetches the rest)
    headers   the record's headers as read (envelope headers included; empty on Kinesis)
    location  where the dead letter sits in the DLQ (topic/partition/offset, ...)
    token     opaque handle for `DeadLetterQueue.remove`
    """

    ref: str
    envelope: DeadLetter
    payload: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    location: Mapping[str, object]
    token: Hashable = None

    def arrival(self) -> dict[str, Any] | None:
        """The payload as a JSON object, or None (poison payloads are often not JSON)."""
        try:
            value = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def field(self, name: str) -> str | None:
        value = (self.arrival() or {}).get(name)
        return value if isinstance(value, str) else None

    @property
    def content_id(self) -> str | None:
        return self.field("content_id")

    @property
    def idempotency_key(self) -> str | None:
        return self.field("idempotency_key") or (self.key.decode("utf-8", "replace") if self.key else None)

    def summary(self) -> dict[str, Any]:
        """One JSON-able line for `dlq list --json`."""
        env = self.envelope
        return {
            "ref": self.ref,
            "tenant": env.tenant_id,
            "category": env.category,
            "reason": env.reason,
            "error_class": env.error_class,
            "error_message": env.error_message,
            "attempt": env.attempt,
            "replay_count": env.replay_count,
            "replay_id": env.replay_id,
            "content_id": self.content_id,
            "idempotency_key": self.idempotency_key,
            "payload_size": env.payload_size,
            "payload_truncated": env.payload_truncated,
            "payload_uri": env.payload_uri,
            "first_seen_at": env.first_seen_at.isoformat(),
            "last_failed_at": env.last_failed_at.isoformat(),
            "source": env.source.model_dump(mode="json", exclude_none=True),
        }


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """`30m`, `1h`, `2d` (that long ago) or an ISO 8601 time (naive = UTC)."""
    match = _DURATION_RE.match(text.strip())
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise ValueError(f"{text!r} is neither a duration (30m, 1h, 2d) nor an ISO 8601 time") from error
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a command acts on; every given criterion must hold.

    category      exact (poison / retries_exhausted / fatal)
    error_class   exact, or the last dotted part (``PoisonMessage`` matches
                  ``services.errors.PoisonMessage``)
    reason        case-insensitive text found in the reason code or the error message
    since, until  bounds on the time of the last failure
    content_id, idempotency_key   exact, read from the original payload
    min_attempts, max_attempts    bounds on the envelope's attempt count
    """

    category: str | None = None
    error_class: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    content_id: str | None = None
    idempotency_key: str | None = None
    min_attempts: int | None = None
    max_attempts: int | None = None

    def matches(self, record: DeadLetterRecord) -> bool:
        env = record.envelope
        if self.category is not None and env.category != self.category:
            return False
        if self.error_class is not None and self.error_class not in (
            env.error_class,
            env.error_class.rsplit(".", 1)[-1],
        ):
            return False
        if self.reason is not None:
            needle = self.reason.lower()
            if needle not in env.reason.lower() and needle not in env.error_message.lower():
                return False
        if self.since is not None and env.last_failed_at < self.since:
            return False
        if self.until is not None and env.last_failed_at > self.until:
            return False
        if self.content_id is not None and record.content_id != self.content_id:
            return False
        if self.idempotency_key is not None and record.idempotency_key != self.idempotency_key:
            return False
        if self.min_attempts is not None and env.attempt < self.min_attempts:
            return False
        return not (self.max_attempts is not None and env.attempt > self.max_attempts)

    def describe(self) -> dict[str, Any]:
        """The criteria that are set, JSON-able (for the audit line)."""
        result: dict[str, Any] = {}
        for name, value in vars(self).items():
            if value is not None:
                result[name] = value.isoformat() if isinstance(value, datetime) else value
        return result

    def select(self, records: Iterable[DeadLetterRecord]) -> Iterator[DeadLetterRecord]:
        return (record for record in records if self.matches(record))


@dataclass(frozen=True)
class DeadLetterStats:
    total: int
    by_category: Mapping[str, int]
    by_error_class: Mapping[str, int]
    by_reason: Mapping[str, int]
    oldest: datetime | None
    newest: datetime | None
    unreadable: int = 0
    replayed_before: int = 0
    by_category_reason: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "unreadable": self.unreadable,
            "replayed_before": self.replayed_before,
            "by_category": dict(self.by_category),
            "by_error_class": dict(self.by_error_class),
            "by_reason": dict(self.by_reason),
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
        }


def stats(records: Iterable[DeadLetterRecord], unreadable: int = 0) -> DeadLetterStats:
    """Counts by category, error class and reason; oldest and newest last failure."""
    categories: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    oldest: datetime | None = None
    newest: datetime | None = None
    total = replayed = 0
    for record in records:
        env = record.envelope
        total += 1
        categories[env.category] += 1
        classes[env.error_class] += 1
        reasons[env.reason] += 1
        pairs[(env.category, env.reason)] += 1
        replayed += env.replay_count > 0
        oldest = env.last_failed_at if oldest is None else min(oldest, env.last_failed_at)
        newest = env.last_failed_at if newest is None else max(newest, env.last_failed_at)
    return DeadLetterStats(
        total=total,
        by_category=dict(categories.most_common()),
        by_error_class=dict(classes.most_common()),
        by_reason=dict(reasons.most_common()),
        oldest=oldest,
        newest=newest,
        unreadable=unreadable,
        replayed_before=replayed,
        by_category_reason=dict(pairs.most_common()),
    )


class DeadLetterQueue(ABC):
    """One tenant's dead letters on one transport (see the module docstring)."""

    transport: str = ""
    #: records that were not audioguard dead letters, counted by `read`
    unreadable: int = 0

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    @abstractmethod
    def describe(self) -> str:
        """Where the dead letters are read from, for humans (topic and group, subscription, ...)."""

    @abstractmethod
    def read(self) -> Iterator[DeadLetterRecord]:
        """Every dead letter still in the queue, oldest first per partition / shard. Never
        removes anything; records that are not audioguard dead letters are counted in
        `unreadable` and skipped."""

    @abstractmethod
    def destination(self, to: str, tier: int = 0) -> str:
        """The topic / stream a replay `to` ("original" or "retry-tier") publishes to."""

    @abstractmethod
    def republish(self, record: OutRecord) -> Future[None]:
        """Publish; the future resolves once the broker confirmed it."""

    @abstractmethod
    def flush(self, timeout: float) -> None:
        """Push out what `republish` queued (futures then resolve)."""

    @abstractmethod
    def remove(self, records: Sequence[DeadLetterRecord]) -> None:
        """Take these dead letters off the queue. Call only after their re-publication was
        confirmed. Kafka and Kinesis can only move a position forward: a dead letter left
        behind (filtered out, refused) keeps every later one in the queue too."""

    def replay_count(self, record: DeadLetterRecord) -> int:
        """How often this dead letter's arrival was replayed already (the loop guard reads it).
        Default: the envelope's count, which the replay headers carry back into it."""
        return record.envelope.replay_count

    def close(self) -> None:  # noqa: B027 - nothing to close by default
        """Give back what was read but not removed, and disconnect."""
