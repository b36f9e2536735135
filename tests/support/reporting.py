"""Verdict and dead-letter records for the reporting tests, built with the real contracts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.tenancy import kafka_topic
from consumers.transport import Message
from dlq.envelope import build_dead_letter, dead_letter_record
from reporting.records import dead_letter_row
from reporting.store import ReportingStore
from schemas import ModelInfo, Timings, Verdict, WindowSummary
from services.errors import PoisonMessage


def verdict_bytes(
    tenant: str,
    key: str,
    score: float,
    *,
    model_version: str = "1.0.0",
    processed_at: datetime | None = None,
    duration: float = 2.0,
    threshold: float = 0.5,
) -> bytes:
    label = "synthetic" if score >= threshold else "bona_fide"
    return (
        Verdict(
            idempotency_key=key,
            tenant_id=tenant,
            content_id=f"c-{key}",
            event_id=f"e-{key}",
            label=label,
            score=score,
            threshold=threshold,
            windows=WindowSummary(
                count=1, mean=score, minimum=score, maximum=score, fraction_over_threshold=0.0
            ),
            duration_seconds=duration,
            model=ModelInfo(name="aasist-lite", version=model_version, checksum="0" * 64),
            timings=Timings(queued_seconds=0.01, scoring_seconds=0.02, end_to_end_seconds=0.1 + score),
            processed_at=processed_at or datetime.now(UTC),
            attempt=1,
        )
        .model_dump_json()
        .encode()
    )


def dead_letter(
    tenant: str, content: str, reason: str = "undecodable_audio"
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of a header-form dead letter, as the worker writes it."""
    message = Message(
        token=("t", 0, 0),
        tenant=tenant,
        topic=f"audioguard.arrivals.{tenant}",
        value=content.encode(),
        key=content.encode(),
        coordinates={"partition": 0, "offset": 0},
    )
    now = datetime.now(UTC)
    envelope = build_dead_letter(
        message,
        PoisonMessage(reason, "test"),
        attempt=1,
        first_seen_at=now - timedelta(seconds=1),
        worker_id="w-test",
        model_version="1.0.0",
        transport="kafka",
    )
    record = dead_letter_record(message, envelope)
    return record.value, list(record.headers)


def store_dead_letter(
    url: str, tenant: str, value: bytes, key: bytes | None, reason: str, offset: int
) -> None:
    """Store in the reporting store (as `audioguard report run` would) the dead letter a worker
    writes for the arrival `value` of `tenant` (DLQ offset `offset`)."""
    message = Message(
        token=("t", 0, 0),
        tenant=tenant,
        topic=kafka_topic("arrivals", tenant),
        value=value,
        key=key,
        coordinates={"partition": 0, "offset": 0},
    )
    envelope = build_dead_letter(
        message,
        PoisonMessage(reason, "could not decode the audio"),
        attempt=1,
        first_seen_at=datetime.now(UTC),
        worker_id="w-test",
        model_version="1.0.0",
        transport="kafka",
    )
    record = dead_letter_record(message, envelope)
    store = ReportingStore(url)
    try:
        row = dead_letter_row(kafka_topic("dlq", tenant), 0, offset, record.value, list(record.headers))
        store.write([row])
    finally:
        store.close()
