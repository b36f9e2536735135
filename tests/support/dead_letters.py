"""Writing real dead letters (the envelope code the worker uses) to a real broker, and running
`audioguard dlq` in-process, for the DLQ tool and runbook tests."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consumers.tenancy import kafka_topic
from consumers.transport import Message
from consumers.transports.kafka import KafkaSink
from dlq.envelope import build_dead_letter, dead_letter_record
from services.cli import main
from services.errors import FatalError, PoisonMessage, RetryableError
from services.platform import arrival_for
from services.settings import Settings


@dataclass(frozen=True)
class Spec:
    """One dead letter to write: its error, attempt count, age and content id."""

    kind: str  # poison | retryable | fatal
    reason: str
    content_id: str
    attempt: int = 1
    age: timedelta = timedelta(minutes=1)
    payload: bytes | None = None  # default: a valid arrival for content_id
    headers: tuple[tuple[str, bytes], ...] = ()


def _error(spec: Spec) -> Exception:
    text = f"{spec.reason} for {spec.content_id}"
    if spec.kind == "poison":
        return PoisonMessage(spec.reason, text)
    if spec.kind == "retryable":
        return RetryableError(spec.reason, text)
    return FatalError(spec.reason, text)


def write_dead_letters(settings: Settings, tenant: str, specs: list[Spec], uri_base: str) -> list[str]:
    """Publish one dead letter per spec to the tenant's DLQ on `settings.transport` (Kinesis:
    the body form); returns the idempotency keys."""
    from consumers.transports.registry import open_publisher

    transport = settings.transport
    sink = KafkaSink(settings.kafka) if transport == "kafka" else open_publisher(settings)
    keys, futures = [], []
    now = datetime.now(UTC)
    for offset, spec in enumerate(specs):
        key = f"{tenant}:{spec.content_id}"
        payload = spec.payload or arrival_for(
            tenant, f"{uri_base}/{spec.content_id}.wav", b"x", key=key, content_id=spec.content_id
        )
        message = Message(
            token=(kafka_topic("arrivals", tenant), 0, offset),
            tenant=tenant,
            topic=kafka_topic("arrivals", tenant),
            value=payload,
            key=key.encode(),
            headers=spec.headers,
            timestamp=(now - spec.age).timestamp(),
            coordinates={"partition": 0, "offset": offset},
        )
        try:
            raise _error(spec)
        except Exception as error:  # noqa: BLE001 - a real traceback for the stack digest
            envelope = build_dead_letter(
                message,
                error,
                attempt=spec.attempt,
                first_seen_at=now - spec.age - timedelta(seconds=5),
                failed_at=now - spec.age,
                worker_id="test-worker",
                model_version="test-model",
                transport=transport,
            )
        futures.append(
            sink.publish(dead_letter_record(message, envelope, with_headers=transport != "kinesis"))
        )
        keys.append(key)
    sink.flush(30)
    for future in futures:
        future.result(30)
    sink.close(10)
    return keys


def dlq(*argv: str) -> tuple[int, str, str]:
    """Run `audioguard dlq ARGV...` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["dlq", *argv])
        except SystemExit as exit_:
            code = int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
            err.write(str(exit_.code))
    return code, out.getvalue(), err.getvalue()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
