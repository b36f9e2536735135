"""Verdict and dead-letter records from the topics -> rows for the reporting store.

Every record is validated against its contract (`schemas.Verdict`, `schemas.DeadLetter` in
either wire form); one that does not validate raises `PoisonMessage` with a reason code, and
the app sends it to the pipeline's own dead-letter topic. The tenant of a record is the tenant
of its topic; a payload that claims another tenant is poison.

This module must never touch a database or a broker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dlq.envelope import dead_letter_from_record
from schemas import SCHEMA_MAJOR, Feedback, Verdict
from services.errors import PoisonMessage

#: every tenant's verdict and dead-letter topics (the app subscribes by this pattern)
TOPIC_PATTERN = r"^audioguard\.(verdicts|dlq|feedback)\.[a-z0-9-]{1,40}$"
_TOPIC_RE = re.compile(r"^audioguard\.(verdicts|dlq|feedback)\.([a-z0-9-]{1,40})$")
#: the pipeline's own dead letters (not matched by TOPIC_PATTERN)
REPORTING_DLQ_TOPIC = "audioguard.reporting-dlq"

VERDICT_COLUMNS = (
    "tenant_id", "idempotency_key", "model_version", "model_name", "model_checksum", "content_id",
    "event_id", "label", "score", "threshold", "duration_seconds", "queued_seconds",
    "scoring_seconds", "end_to_end_seconds", "processed_at", "attempt", "source_topic",
    "source_partition", "source_offset", "payload",
)  # fmt: skip
DEAD_LETTER_COLUMNS = (
    "tenant_id", "dlq_topic", "dlq_partition", "dlq_offset", "error_class", "reason", "category",
    "attempt", "first_seen_at", "last_failed_at", "worker_id", "model_version", "replay_count",
    "payload_size", "envelope",
)  # fmt: skip
FEEDBACK_COLUMNS = ("tenant_id", "idempotency_key", "truth", "decided_at", "moderator", "source")


@dataclass(frozen=True)
class Row:
    """One row for `table` ("verdicts", "dead_letters", "feedback"), values in its column order."""

    table: str
    values: tuple[Any, ...]


def topic_kind(topic: str) -> tuple[str, str]:
    """-> ("verdicts" | "dlq" | "feedback", tenant); PoisonMessage for a topic outside the pattern."""
    match = _TOPIC_RE.match(topic)
    if not match:
        raise PoisonMessage("unexpected_topic", f"{topic!r} is not a verdict or dead-letter topic")
    return match.group(1), match.group(2)


def _major(version: str) -> None:
    if version.split(".", 1)[0] != str(SCHEMA_MAJOR):
        raise PoisonMessage("unknown_schema_version", f"schema_version {version!r}")


def verdict_row(topic: str, partition: int, offset: int, value: bytes | None) -> Row:
    _, tenant = topic_kind(topic)
    if not value:
        raise PoisonMessage("empty_record", "a verdict record without a value")
    try:
        verdict = Verdict.model_validate_json(value)
    except ValidationError as error:
        raise PoisonMessage("schema_violation", str(error)[:1000]) from error
    _major(verdict.schema_version)
    if verdict.tenant_id != tenant:
        raise PoisonMessage("tenant_mismatch", f"verdict of {verdict.tenant_id!r} on {topic}")
    return Row(
        "verdicts",
        (
            tenant, verdict.idempotency_key, verdict.model.version, verdict.model.name,
            verdict.model.checksum, verdict.content_id, verdict.event_id, verdict.label,
            verdict.score, verdict.threshold, verdict.duration_seconds, verdict.timings.queued_seconds,
            verdict.timings.scoring_seconds, verdict.timings.end_to_end_seconds, verdict.processed_at,
            verdict.attempt, topic, partition, offset, verdict.model_dump_json(),
        ),
    )  # fmt: skip


def dead_letter_row(
    topic: str, partition: int, offset: int, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> Row:
    _, tenant = topic_kind(topic)
    envelope, _payload = dead_letter_from_record(value or b"", headers)
    if envelope.tenant_id != tenant:
        raise PoisonMessage("tenant_mismatch", f"dead letter of {envelope.tenant_id!r} on {topic}")
    body = envelope.model_dump(mode="json", exclude={"payload_b64"})
    return Row(
        "dead_letters",
        (
            tenant, topic, partition, offset, envelope.error_class, envelope.reason, envelope.category,
            envelope.attempt, envelope.first_seen_at, envelope.last_failed_at, envelope.worker_id,
            envelope.model_version, envelope.replay_count, envelope.payload_size, json.dumps(body),
        ),
    )  # fmt: skip


def feedback_row(topic: str, value: bytes | None) -> Row:
    _, tenant = topic_kind(topic)
    if not value:
        raise PoisonMessage("empty_record", "a feedback record without a value")
    try:
        decision = Feedback.model_validate_json(value)
    except ValidationError as error:
        raise PoisonMessage("schema_violation", str(error)[:1000]) from error
    if decision.tenant_id != tenant:
        raise PoisonMessage("tenant_mismatch", f"feedback of {decision.tenant_id!r} on {topic}")
    return Row(
        "feedback",
        (tenant, decision.idempotency_key, decision.truth, decision.decided_at, decision.moderator,
         f"topic:{topic}"),
    )  # fmt: skip


def row_for(
    topic: str, partition: int, offset: int, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> Row:
    """The row a record becomes; PoisonMessage (with a reason) when it cannot be one."""
    kind, _ = topic_kind(topic)
    if kind == "verdicts":
        return verdict_row(topic, partition, offset, value)
    if kind == "feedback":
        return feedback_row(topic, value)
    return dead_letter_row(topic, partition, offset, value, headers)
