"""The dead-letter envelope: how a failed arrival is written to its tenant's DLQ, and read back.

Two wire forms of one contract (`schemas.DeadLetter`):

* **headers** (Kafka, Pub/Sub): the record's value is the original payload, byte for byte;
  every envelope field travels as an ``ag-dlq-<field>`` header (`source` as compact JSON),
  next to the original headers. A consumer of the DLQ sees exactly what the platform sent.
* **body** (Kinesis, which has no headers): the record's value is the envelope as JSON with
  ``payload_b64`` holding the original payload.

Every envelope records the payload's size and sha256. A payload that would take the record
past its destination's limit (`DeadLetterWriter.max_record_bytes`, from the transport
registry) is not carried whole: it is stored in the tenant's dead-letter area
(`PayloadStore`, keyed by its sha256) when that works, the record keeps only its first
bytes, and the envelope says ``payload_truncated`` and where the full payload is
(``payload_uri``, absent when it could not be stored). So a dead letter always fits.

`dead_letter_from_record` reads either form back, so the inspect / replay tooling does not
care which transport it is looking at. It also reads a third kind of record no worker wrote:
a message that Pub/Sub's own dead-letter policy forwarded (every delivery attempt nacked or
timed out), recognised by its ``CloudPubSubDeadLetterSource*`` attributes; its envelope is
built from those attributes (category retries_exhausted, reason ``max_delivery_attempts``).

The replay tool marks what it republishes with `REPLAY_COUNT_HEADER` / `REPLAY_ID_HEADER`
(see `replay_headers`); a replayed arrival that fails again carries both forward into its new envelope.

This module must never alter the payload bytes it carries (a record carries the whole payload
or, marked truncated, its first bytes), never import an SDK, and never raise
while building an envelope for a failure it was handed (a worker that cannot dead-letter
cannot make progress): odd errors and odd coordinates are described, not rejected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, Protocol, get_args

from pydantic import ValidationError

from consumers.transport import Message, OutRecord
from schemas import DeadLetter, ErrorCategory, SourceCoordinates
from services.errors import AudioguardError, FatalError, PoisonMessage, RetryableError
from services.retry import retry_call
from services.settings import RetrySettings

__all__ = [
    "ENVELOPE_FIELDS",
    "ENVELOPE_HEADROOM_BYTES",
    "DeadLetterWriter",
    "HEADER_PREFIX",
    "MAX_HEADER_VALUE_BYTES",
    "PUBSUB_DEAD_LETTER_PREFIX",
    "REPLAY_COUNT_HEADER",
    "REPLAY_ID_HEADER",
    "build_dead_letter",
    "dead_letter_from_record",
    "dead_letter_record",
    "PayloadStore",
    "envelope_header",
    "error_category",
    "fit_dead_letter",
    "record_bytes",
    "replay_headers",
    "stack_digest",
]

log = logging.getLogger("audioguard.dlq")

#: every envelope header starts with this; the rest of the name is the DeadLetter field name
HEADER_PREFIX = "ag-dlq-"
#: set by the replay tool on the arrival it republishes; read back into the next envelope
REPLAY_COUNT_HEADER = "ag-replay-count"
REPLAY_ID_HEADER = "ag-replay-id"
#: Pub/Sub caps an attribute value at 1024 bytes; the error message is cut to fit in header form
MAX_HEADER_VALUE_BYTES = 1024
#: the DeadLetter fields carried as headers (payload_b64 only exists in the body form)
ENVELOPE_FIELDS: tuple[str, ...] = tuple(name for name in DeadLetter.model_fields if name != "payload_b64")

#: attributes Pub/Sub adds when its dead-letter policy forwards a message
PUBSUB_DEAD_LETTER_PREFIX = "CloudPubSubDeadLetterSource"
_PUBSUB_SUBSCRIPTION_RE = re.compile(r"(?:^|/)arrivals-([a-z0-9-]{1,40})-workers$")

#: kept free under a destination's record limit: what `record_bytes` does not count (Kafka's
#: record and batch framing, header length varints, Pub/Sub's request framing)
ENVELOPE_HEADROOM_BYTES = 1024

_MAX_MESSAGE_CHARS = 4000  # DeadLetter.error_message's limit
_MAX_CAUSE_DEPTH = 5
_TRANSPORTS = frozenset(get_args(SourceCoordinates.model_fields["transport"].annotation))
_INT_COORDINATES = ("partition", "offset")
_STR_COORDINATES = ("ack_id", "message_id", "shard_id", "sequence_number")


def envelope_header(field: str) -> str:
    """The header name of a DeadLetter field: ``ag-dlq-<field>``."""
    if field not in ENVELOPE_FIELDS:
        raise KeyError(f"{field!r} is not a dead-letter envelope field")
    return HEADER_PREFIX + field


def _frame_file(filename: str) -> str:
    # The last two path parts ("services/storage.py"): stable across checkouts, virtualenvs
    # and container layouts, still telling apart the many __init__.py files.
    return "/".join(PurePath(filename).parts[-2:])


def stack_digest(error: BaseException) -> str:
    """sha1 of the error's type and its traceback's (file, function) frames, following
    ``raise ... from`` causes: stable across line edits and messages, so identical failures
    group together on a dashboard even when their messages name different uploads."""
    parts: list[str] = []
    current: BaseException | None = error
    for _ in range(_MAX_CAUSE_DEPTH):
        if current is None:
            break
        kind = type(current)
        parts.append(f"{kind.__module__}.{kind.__qualname__}")
        parts.extend(
            f"{_frame_file(frame.filename)}:{frame.name}"
            for frame in traceback.extract_tb(current.__traceback__)
        )
        current = current.__cause__
    return hashlib.sha1("\n".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()


def error_category(error: BaseException) -> tuple[ErrorCategory, str]:
    """(category, reason) of an error: PoisonMessage -> poison, RetryableError ->
    retries_exhausted, FatalError -> fatal, anything else -> poison / "internal_error" (the worker's own bug,
    grouped by the error class and stack digest the envelope carries)."""
    if isinstance(error, PoisonMessage):
        return "poison", error.reason
    if isinstance(error, RetryableError):
        return "retries_exhausted", error.reason
    if isinstance(error, FatalError):
        return "fatal", error.reason
    return "poison", "internal_error"


def _error_class(error: BaseException) -> str:
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _error_message(error: BaseException) -> str:
    text = error.message if isinstance(error, AudioguardError) else str(error)
    if not text:
        text = type(error).__name__
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
    return text


def _coordinates(message: Message, transport: str) -> SourceCoordinates:
    raw = message.coordinates
    values: dict[str, Any] = {"transport": transport, "topic": message.topic}
    for name in _INT_COORDINATES:
        value = raw.get(name)
        if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
            values[name] = int(value)
    for name in _STR_COORDINATES:
        value = raw.get(name)
        if value is not None:
            values[name] = str(value)
    if message.timestamp is not None:
        values["timestamp"] = datetime.fromtimestamp(message.timestamp, UTC)
    return SourceCoordinates(**values)


def _replay_marks(message: Message) -> tuple[int, str | None]:
    count_raw = message.header(REPLAY_COUNT_HEADER)
    id_raw = message.header(REPLAY_ID_HEADER)
    count = 0
    if count_raw is not None:
        try:
            count = max(0, int(count_raw.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            count = 0  # a mangled mark must not stop the dead letter; the replay id still links it
    replay_id = id_raw.decode("utf-8", errors="replace") if id_raw else None
    return count, replay_id


def build_dead_letter(
    message: Message,
    error: BaseException,
    *,
    attempt: int,
    first_seen_at: datetime,
    worker_id: str,
    model_version: str,
    transport: str,
    failed_at: datetime | None = None,
) -> DeadLetter:
    """The envelope for `message`, which failed with `error` on delivery attempt `attempt`.

    `first_seen_at` is when a worker first saw this arrival (naive datetimes are taken as UTC);
    `failed_at` defaults to now. Raises ValueError only for an unknown `transport`.
    """
    if transport not in _TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; expected one of {sorted(_TRANSPORTS)}")
    category, reason = error_category(error)
    replay_count, replay_id = _replay_marks(message)
    if first_seen_at.tzinfo is None:
        first_seen_at = first_seen_at.replace(tzinfo=UTC)
    return DeadLetter(
        tenant_id=message.tenant,
        error_class=_error_class(error),
        error_message=_error_message(error),
        reason=reason,
        category=category,
        stack_digest=stack_digest(error),
        attempt=max(1, attempt),
        source=_coordinates(message, transport),
        first_seen_at=first_seen_at,
        last_failed_at=failed_at or datetime.now(UTC),
        worker_id=worker_id,
        model_version=model_version,
        replay_count=replay_count,
        replay_id=replay_id,
        payload_size=len(message.value),
        payload_sha256=hashlib.sha256(message.value).hexdigest(),
    )


def _cut_utf8(text: str, limit: int) -> bytes:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[: limit - 3].decode("utf-8", errors="ignore").encode("utf-8") + "…".encode()


def _envelope_headers(dead_letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers: list[tuple[str, bytes]] = []
    for name, value in dead_letter.model_dump(mode="json", exclude={"payload_b64"}).items():
        if value is None or (name == "payload_truncated" and value is False):
            continue  # payload_truncated is only written when true: absent reads as false
        if isinstance(value, dict):
            encoded = json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")
        elif name == "error_message":
            encoded = _cut_utf8(str(value), MAX_HEADER_VALUE_BYTES)
        else:
            encoded = str(value).encode("utf-8")
        headers.append((HEADER_PREFIX + name, encoded))
    return headers


def _without_envelope(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    # A message dead-lettered twice (replayed, failed again) must not carry two envelopes.
    return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]


def dead_letter_record(
    message: Message,
    dead_letter: DeadLetter,
    *,
    with_headers: bool = True,
    idempotency_key: str | None = None,
    carried: bytes | None = None,
) -> OutRecord:
    """The record for the tenant's DLQ (destination "dlq").

    key: the message's key, else `idempotency_key`, else the payload's sha256 (always set, so a
    Kinesis partition key exists). with_headers=True: value is the original payload unchanged,
    the original headers are kept and the envelope added as ``ag-dlq-*`` headers.
    with_headers=False (Kinesis): value is the envelope JSON with ``payload_b64``, no headers.
    `carried` replaces the payload in the record (the first bytes of a truncated one; see
    `fit_dead_letter`); the envelope must then say ``payload_truncated``.
    """
    payload = message.value if carried is None else carried
    if message.key:
        key = message.key
    elif idempotency_key:
        key = idempotency_key.encode("utf-8")
    else:
        key = hashlib.sha256(message.value).hexdigest().encode("ascii")
    if with_headers:
        return OutRecord(
            tenant=dead_letter.tenant_id,
            destination="dlq",
            key=key,
            value=payload,
            headers=tuple(_without_envelope(message.headers) + _envelope_headers(dead_letter)),
        )
    body = dead_letter.model_copy(update={"payload_b64": base64.b64encode(payload).decode("ascii")})
    return OutRecord(
        tenant=dead_letter.tenant_id,
        destination="dlq",
        key=key,
        value=body.model_dump_json(exclude_none=True).encode("utf-8"),
    )


def record_bytes(record: OutRecord) -> int:
    """What `record` weighs against a destination's record limit: value, key and headers
    (names and values). Framing is not counted: leave `ENVELOPE_HEADROOM_BYTES` for it."""
    headers = sum(len(name.encode("utf-8")) + len(value) for name, value in record.headers)
    return len(record.value) + len(record.key or b"") + headers


class PayloadStore(Protocol):
    """The tenants' dead-letter areas (services.storage.DeadLetterPayloads)."""

    def store(self, tenant: str, data: bytes) -> str:
        """Store `data` keyed by its sha256 (idempotent) and return its URI; RetryableError
        when the area cannot be written."""
        ...

    def load(self, tenant: str, uri: str, *, expected_sha256: str) -> bytes:
        """The payload at `uri`, confined to the tenant's area and checked against the hash."""
        ...


def fit_dead_letter(
    message: Message,
    dead_letter: DeadLetter,
    *,
    max_record_bytes: int,
    with_headers: bool = True,
    payloads: PayloadStore | None = None,
    prefix_bytes: int = 4096,
    retry: RetrySettings | None = None,
) -> OutRecord:
    """`dead_letter_record`, made to fit under `max_record_bytes` (less the headroom).

    A record that fits is returned as is. Otherwise the payload is stored with `payloads`
    (retried per `retry`), and the record keeps at most `prefix_bytes` of it, as many as fit,
    with ``payload_truncated`` and ``payload_uri`` set; when storing fails (or there is no
    store) the record keeps that prefix only, ``payload_uri`` absent, and an error is logged.
    Never raises for a failure of the store. A record whose envelope alone is over the limit
    (a huge key or original headers) still comes back, over it: its publish then fails and
    stops the worker (steps.Publish), never a silent loop.
    """
    budget = max_record_bytes - ENVELOPE_HEADROOM_BYTES
    whole = dead_letter_record(message, dead_letter, with_headers=with_headers)
    if record_bytes(whole) <= budget:
        return whole
    tenant = dead_letter.tenant_id
    uri: str | None = None
    if payloads is not None:
        store = payloads

        def put() -> str:
            return store.store(tenant, message.value)

        try:
            uri = retry_call(put, retry, describe="dead-letter payload store") if retry else put()
        except Exception as error:  # noqa: BLE001 - a dead letter must be written whatever the store does
            log.error(
                "dead-letter payload could not be stored; the dead letter keeps only its first bytes",
                extra={"tenant": tenant, "payload_bytes": len(message.value), "error": str(error)},
            )
    else:
        log.warning(
            "dead-letter payload over the DLQ record limit and no dlq.payload_uri: keeping its first bytes",
            extra={"tenant": tenant, "payload_bytes": len(message.value), "limit": max_record_bytes},
        )
    cut = dead_letter.model_copy(update={"payload_truncated": True, "payload_uri": uri})
    bare = dead_letter_record(message, cut, with_headers=with_headers, carried=b"")
    room = max(0, budget - record_bytes(bare))
    if not with_headers:
        room = room // 4 * 3  # the body form carries the bytes as base64
    kept = message.value[: min(prefix_bytes, room, len(message.value))]
    return dead_letter_record(message, cut, with_headers=with_headers, carried=kept)


def dead_letter_from_record(value: bytes, headers: Sequence[tuple[str, bytes]]) -> tuple[DeadLetter, bytes]:
    """(envelope, original payload) from a DLQ record in either form, or forwarded by Pub/Sub's
    dead-letter policy.

    Raises ``PoisonMessage("bad_dead_letter")`` when the record is none of these (e.g. written
    by something other than audioguard)."""
    if not any(name.startswith(HEADER_PREFIX) for name, _ in headers) and any(
        name.startswith(PUBSUB_DEAD_LETTER_PREFIX) for name, _ in headers
    ):
        return _from_pubsub_policy(headers), value
    fields: dict[str, Any] = {}
    for name, raw in headers:
        if not name.startswith(HEADER_PREFIX):
            continue
        field = name[len(HEADER_PREFIX) :]
        if field not in ENVELOPE_FIELDS:
            continue  # a field from a newer minor version: ignore it, like the contract does
        text = raw.decode("utf-8", errors="replace")
        try:
            fields[field] = json.loads(text) if field == "source" else text
        except ValueError as error:
            raise PoisonMessage("bad_dead_letter", f"header {name} is not JSON: {error}") from error
    try:
        if fields:
            return DeadLetter.model_validate(fields), value
        envelope = DeadLetter.model_validate_json(value)
    except (ValidationError, ValueError) as error:
        raise PoisonMessage("bad_dead_letter", f"not an audioguard dead letter: {error}") from error
    if envelope.payload_b64 is None:
        raise PoisonMessage("bad_dead_letter", "dead letter in body form without payload_b64")
    try:
        payload = base64.b64decode(envelope.payload_b64, validate=True)
    except ValueError as error:
        raise PoisonMessage("bad_dead_letter", f"payload_b64 is not base64: {error}") from error
    return envelope, payload


def _pubsub_time(text: str | None) -> datetime | None:
    if not text:
        return None
    # RFC 3339 with up to nanoseconds ("2026-11-22T06:41:48.328Z"); Python takes microseconds.
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if match is None:
        return None
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        return datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}")
    except ValueError:
        return None


def _from_pubsub_policy(headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
    attributes = {name: raw.decode("utf-8", errors="replace") for name, raw in headers}
    subscription = attributes.get(PUBSUB_DEAD_LETTER_PREFIX + "Subscription", "")
    match = _PUBSUB_SUBSCRIPTION_RE.search(subscription)
    tenant = match.group(1) if match else "unknown"
    count_text = attributes.get(PUBSUB_DEAD_LETTER_PREFIX + "DeliveryCount", "")
    attempts = int(count_text) if count_text.isdigit() and int(count_text) > 0 else 1
    published = _pubsub_time(attributes.get(PUBSUB_DEAD_LETTER_PREFIX + "TopicPublishTime"))
    now = datetime.now(UTC)
    replay_count_text = attributes.get(REPLAY_COUNT_HEADER, "")
    return DeadLetter(
        tenant_id=tenant,
        error_class="PubSubDeadLetterPolicy",
        error_message=(
            f"Pub/Sub forwarded this message after {attempts} delivery attempts on subscription "
            f"{subscription or '(unknown)'}: every attempt was nacked or outlived its ack deadline, "
            "and no worker wrote a dead letter for it"
        ),
        reason="max_delivery_attempts",
        category="retries_exhausted",
        stack_digest=hashlib.sha1(b"pubsub-dead-letter-policy", usedforsecurity=False).hexdigest(),
        attempt=attempts,
        source=SourceCoordinates(
            transport="pubsub", topic=f"arrivals-{tenant}" if match else subscription or "unknown"
        ),
        first_seen_at=published or now,
        # unknown: Pub/Sub does not say when it gave up; the time we read it is the closest bound
        last_failed_at=now,
        worker_id="pubsub-dead-letter-policy",
        model_version="unknown",
        replay_count=int(replay_count_text) if replay_count_text.isdigit() else 0,
        replay_id=attributes.get(REPLAY_ID_HEADER) or None,
    )


def replay_headers(
    dead_letter: DeadLetter, original_headers: Sequence[tuple[str, bytes]], replay_id: str
) -> tuple[tuple[str, bytes], ...]:
    """Headers for republishing a dead letter's payload to the arrivals topic: the original
    headers without the envelope or older replay marks, plus replay count + 1 and `replay_id`."""
    kept = [
        (name, value)
        for name, value in _without_envelope(original_headers)
        if name not in (REPLAY_COUNT_HEADER, REPLAY_ID_HEADER)
    ]
    kept.append((REPLAY_COUNT_HEADER, str(dead_letter.replay_count + 1).encode("ascii")))
    kept.append((REPLAY_ID_HEADER, replay_id.encode("utf-8")))
    return tuple(kept)


@dataclass(frozen=True)
class DeadLetterWriter:
    """The worker's dead-letter factory (consumers.ports.DeadLetterFactory): envelope + record
    for one failed message, stamped with this worker and model, fitted under the transport's
    record limit (`fit_dead_letter`; None: no limit)."""

    worker_id: str
    model_version: str
    transport: str
    max_record_bytes: int | None = None
    payloads: PayloadStore | None = None
    prefix_bytes: int = 4096
    retry: RetrySettings | None = None
    #: the serving model's version now (a hot swap changes it); None: `model_version`
    current_model_version: Callable[[], str] | None = None

    def __call__(self, message: Message, error: BaseException, *, first_seen_at: datetime) -> OutRecord:
        current = self.current_model_version
        version = current() if current is not None else self.model_version
        envelope = build_dead_letter(
            message,
            error,
            attempt=message.delivery_attempt,
            first_seen_at=first_seen_at,
            worker_id=self.worker_id,
            model_version=version,
            transport=self.transport,
        )
        # Kinesis records carry no headers: the envelope travels in the body there
        with_headers = self.transport != "kinesis"
        if self.max_record_bytes is None:
            return dead_letter_record(message, envelope, with_headers=with_headers)
        return fit_dead_letter(
            message,
            envelope,
            max_record_bytes=self.max_record_bytes,
            with_headers=with_headers,
            payloads=self.payloads,
            prefix_bytes=self.prefix_bytes,
            retry=self.retry,
        )
