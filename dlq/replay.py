"""Replaying dead letters after a fix: provenance, loop guard, rate limit, confirmed removal.

`replay_dead_letters` republishes the original payload of each selected dead letter, key
unchanged, either to the tenant's arrivals (`to="original"`) or to a Kafka retry tier
(`to="retry-tier"`), with provenance headers:

    ag-replay-count     the dead letter's replay count + 1 (the loop guard reads it back)
    ag-replay-id        this run's id (also in the audit line)
    ag-replay-operator  who ran it
    ag-replay-origin    JSON: the arrival's original coordinates and where the dead letter sat

A replayed arrival that fails again carries these headers into its new dead letter
(`dlq.envelope` keeps every non-envelope header and reads the count and id back).

A dead letter whose payload was too large for its record (``payload_truncated``) carries only
its first bytes: the full payload is fetched from ``payload_uri`` (the tenant's dead-letter
area, `PayloadStore`), checked against ``payload_sha256`` and republished byte for byte. One
whose payload could not be stored (no ``payload_uri``) is refused (``refused_truncated``) and
stays in the queue: republishing the prefix would only fail again as another poison message,
and would take the one record of that arrival off the queue. There is no flag to force it.

Idempotency does not depend on this module: the idempotency key is unchanged, so a
replayed arrival that already has a verdict is answered from the verdict store (no second
scoring, the same verdict). A dead letter is removed only after the broker confirmed its
re-publication; refused, filtered-out and failed ones stay in the queue.

This module must never remove a dead letter before its re-publication is confirmed,
never change a payload, and never import a broker SDK.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from consumers.retry_topics import (
    ATTEMPT_HEADER,
    DUE_HEADER,
    FIRST_SEEN_HEADER,
    ORIGIN_HEADER,
    REASON_HEADER,
    RETRY_HEADER_PREFIX,
    TIER_HEADER,
)
from consumers.transport import OutRecord
from dlq.envelope import PayloadStore, replay_headers
from dlq.inspect import DeadLetterQueue, DeadLetterRecord

__all__ = [
    "OPERATOR_HEADER",
    "ORIGIN_REPLAY_HEADER",
    "ReplayOptions",
    "ReplaySummary",
    "replay_dead_letters",
    "replay_record",
]

OPERATOR_HEADER = "ag-replay-operator"
ORIGIN_REPLAY_HEADER = "ag-replay-origin"

Target = Literal["original", "retry-tier"]
#: progress callback: (record, outcome) with outcome in Outcome
Outcome = Literal["replayed", "would_replay", "refused_loop", "refused_truncated", "failed"]


@dataclass(frozen=True)
class ReplayOptions:
    """to          "original" (the tenant's arrivals) or "retry-tier" (Kafka only)
    tier        the retry tier for "retry-tier"
    rate        records per second at most (None: as fast as the broker confirms)
    limit       replay at most this many (refused ones do not count)
    dry_run     print what would happen; publish and remove nothing
    operator    who runs it (provenance and audit)
    max_replays the loop guard: a dead letter replayed this many times already is refused
    batch       confirm and remove after this many publishes
    """

    to: Target = "original"
    tier: int = 0
    rate: float | None = None
    limit: int | None = None
    dry_run: bool = False
    operator: str = "unknown"
    max_replays: int = 3
    batch: int = 100

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must not be negative")
        if self.max_replays < 1:
            raise ValueError("max_replays must be at least 1")


@dataclass
class ReplaySummary:
    replay_id: str
    dry_run: bool
    destination: str
    matched: int = 0
    replayed: int = 0
    would_replay: int = 0
    refused_loop: int = 0
    #: truncated dead letters whose full payload was never stored: they cannot be replayed
    refused_truncated: int = 0
    failed: int = 0
    removed: int = 0
    elapsed_seconds: float = 0.0
    #: records per second between the first and the last publish (None below two)
    measured_rate: float | None = None
    by_reason: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    #: stopped by Ctrl-C before every matching dead letter was handled
    interrupted: bool = False

    def as_json(self) -> dict[str, Any]:
        values = {k: v for k, v in vars(self).items() if k not in ("by_reason", "errors")}
        values["by_reason"] = dict(self.by_reason)
        values["errors"] = self.errors[:10]
        return values


def _origin(record: DeadLetterRecord) -> bytes:
    origin = {
        "source": record.envelope.source.model_dump(mode="json", exclude_none=True),
        "dead_letter": dict(record.location),
        "previous_replay_id": record.envelope.replay_id,
    }
    return json.dumps(origin, separators=(",", ":"), sort_keys=True, default=str).encode()


def replay_record(
    record: DeadLetterRecord,
    *,
    replay_id: str,
    operator: str,
    to: Target = "original",
    tier: int = 0,
    now: Callable[[], float] = time.time,
) -> OutRecord:
    """The record that replays `record`: original payload and key, provenance headers."""
    headers = [
        (name, value)
        for name, value in replay_headers(record.envelope, record.headers, replay_id)
        if not name.startswith(RETRY_HEADER_PREFIX) and name not in (OPERATOR_HEADER, ORIGIN_REPLAY_HEADER)
    ]
    headers += [(OPERATOR_HEADER, operator.encode("utf-8")), (ORIGIN_REPLAY_HEADER, _origin(record))]
    key = record.key or (record.idempotency_key or "").encode("utf-8")
    if to == "retry-tier":
        source = record.envelope.source
        origin = {
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "timestamp_ms": int(source.timestamp.timestamp() * 1000) if source.timestamp else None,
        }
        headers += [
            (ATTEMPT_HEADER, str(record.envelope.attempt + 1).encode()),
            (TIER_HEADER, str(tier).encode()),
            # due now: the operator decided it runs again; the tier's own delay is for failures
            (DUE_HEADER, f"{now():.3f}".encode()),
            (FIRST_SEEN_HEADER, f"{record.envelope.first_seen_at.timestamp():.3f}".encode()),
            (ORIGIN_HEADER, json.dumps(origin, separators=(",", ":"), sort_keys=True).encode()),
            (REASON_HEADER, record.envelope.reason.encode("utf-8", errors="replace")[:200]),
        ]
        return OutRecord(
            tenant=record.envelope.tenant_id,
            destination="retry",
            tier=tier,
            key=key,
            value=record.payload,
            headers=tuple(headers),
        )
    return OutRecord(
        tenant=record.envelope.tenant_id,
        destination="arrivals",
        key=key,
        value=record.payload,
        headers=tuple(headers),
        ordering_key=record.content_id,
    )


class _Pacer:
    """Spaces publishes 1/rate apart on a fixed schedule (no drift from slow iterations)."""

    def __init__(
        self, rate: float | None, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next is None:
            self._next = now
        if self._next > now:
            self._sleep(self._next - now)
        self._next += self._interval


def replay_dead_letters(
    queue: DeadLetterQueue,
    records: Iterable[DeadLetterRecord],
    options: ReplayOptions,
    *,
    replay_id: str | None = None,
    on_record: Callable[[DeadLetterRecord, Outcome], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] | None = None,
    payloads: PayloadStore | None = None,
    handlers: Mapping[str, Callable[[DeadLetterRecord], None]] | None = None,
) -> ReplaySummary:
    """Replay the (already filtered) `records` from `queue`; see the module docstring.

    `stop()` returning True ends the run between two records (the CLI sets it on Ctrl-C):
    what was published is confirmed and removed, the rest stays in the queue. `payloads`
    fetches the full payload of a truncated dead letter (without it such a record fails and
    stays queued). A dead letter whose reason has one of `handlers` is not republished: the
    handler replays it (e.g. ``webhook_failed``: the API re-queues the webhook); when it returns,
    the dead letter is removed like a confirmed publish, when it raises, it stays queued."""
    summary = ReplaySummary(
        replay_id=replay_id or f"replay-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        dry_run=options.dry_run,
        destination=queue.destination(options.to, options.tier),
    )
    pacer = _Pacer(options.rate, clock, sleep)
    pending: list[tuple[DeadLetterRecord, Future[None]]] = []
    started = clock()
    first_publish: float | None = None
    last_publish: float | None = None

    def settle() -> None:
        if not pending:
            return
        queue.flush(60)
        confirmed = []
        for record, future in pending:
            try:
                future.result(60)
            except Exception as error:  # noqa: BLE001 - reported per record, the run goes on
                summary.failed += 1
                summary.errors.append(f"{record.ref}: {error}")
                if on_record is not None:
                    on_record(record, "failed")
                continue
            confirmed.append(record)
            summary.replayed += 1
            summary.by_reason[record.envelope.reason] += 1
            if on_record is not None:
                on_record(record, "replayed")
        pending.clear()
        if confirmed:
            queue.remove(confirmed)
            summary.removed += len(confirmed)

    def publish_all() -> None:
        nonlocal first_publish, last_publish
        for record in records:
            if stop is not None and stop():
                summary.interrupted = True
                return
            summary.matched += 1
            if queue.replay_count(record) >= options.max_replays:
                summary.refused_loop += 1
                if on_record is not None:
                    on_record(record, "refused_loop")
                continue
            envelope = record.envelope
            stored = envelope.payload_uri is not None and envelope.payload_sha256 is not None
            if envelope.payload_truncated and not stored:
                summary.refused_truncated += 1
                if on_record is not None:
                    on_record(record, "refused_truncated")
                continue
            taken = summary.replayed + summary.would_replay + summary.failed + len(pending)
            if options.limit is not None and taken >= options.limit:
                continue  # still counted as matched, so the summary says how many are left
            if envelope.payload_truncated and not options.dry_run:
                try:
                    record = _restored(record, payloads)
                except Exception as error:  # noqa: BLE001 - reported per record, the run goes on
                    summary.failed += 1
                    summary.errors.append(f"{record.ref}: {error}")
                    if on_record is not None:
                        on_record(record, "failed")
                    continue
            if options.dry_run:
                summary.would_replay += 1
                summary.by_reason[record.envelope.reason] += 1
                if on_record is not None:
                    on_record(record, "would_replay")
                continue
            handler = (handlers or {}).get(envelope.reason)
            if handler is not None:
                settle()  # keep removals in queue order
                try:
                    handler(record)
                except Exception as error:  # noqa: BLE001 - reported per record, the run goes on
                    summary.failed += 1
                    summary.errors.append(f"{record.ref}: {error}")
                    if on_record is not None:
                        on_record(record, "failed")
                    continue
                queue.remove([record])
                summary.removed += 1
                summary.replayed += 1
                summary.by_reason[envelope.reason] += 1
                if on_record is not None:
                    on_record(record, "replayed")
                continue
            out = replay_record(
                record,
                replay_id=summary.replay_id,
                operator=options.operator,
                to=options.to,
                tier=options.tier,
            )
            pacer.wait()
            pending.append((record, queue.republish(out)))
            last_publish = clock()
            first_publish = last_publish if first_publish is None else first_publish
            if len(pending) >= options.batch or _due(options, len(pending)):
                settle()

    try:
        publish_all()
    except KeyboardInterrupt:
        # Ctrl-C: what was published is still confirmed (and removed) below; the rest stays queued
        summary.interrupted = True
    settle()
    summary.elapsed_seconds = clock() - started
    published = summary.replayed + summary.failed
    span = (last_publish - first_publish) if first_publish is not None and last_publish is not None else 0.0
    if published > 1 and span > 0:
        summary.measured_rate = (published - 1) / span
    return summary


def _restored(record: DeadLetterRecord, payloads: PayloadStore | None) -> DeadLetterRecord:
    """`record` with its full payload, fetched from its ``payload_uri`` and checked by sha256."""
    envelope = record.envelope
    assert envelope.payload_uri is not None and envelope.payload_sha256 is not None
    if payloads is None:
        raise ValueError(
            f"its payload is at {envelope.payload_uri}, but dlq.payload_uri is not configured to read it"
        )
    full = payloads.load(envelope.tenant_id, envelope.payload_uri, expected_sha256=envelope.payload_sha256)
    return replace(record, payload=full)


def _due(options: ReplayOptions, pending: int) -> bool:
    # with a rate, confirm about once a second so a slow broker shows up in the progress bar
    return options.rate is not None and pending >= max(1, int(options.rate))
