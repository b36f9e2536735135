"""A dead letter always fits its DLQ: a payload over the record limit is stored in the tenant's
dead-letter area (keyed by its sha256) or, failing that, cut to a bounded prefix."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from consumers.transport import Message
from dlq.envelope import (
    ENVELOPE_HEADROOM_BYTES,
    HEADER_PREFIX,
    build_dead_letter,
    dead_letter_from_record,
    fit_dead_letter,
    record_bytes,
)
from schemas import DeadLetter
from services.errors import PoisonMessage
from services.settings import DlqSettings, StorageSettings
from services.storage import AudioStorage, DeadLetterPayloads
from tests.unit.test_envelope import FAILED_AT, FIRST_SEEN, kafka_message, raised

LIMIT = 64 * 1024
BIG = os.urandom(200 * 1024)  # not JSON, not UTF-8: the bytes must come back exactly


def oversize(message: Message, transport: str = "kafka") -> DeadLetter:
    return build_dead_letter(
        message,
        raised(PoisonMessage("oversize_event", f"event of {len(message.value)} bytes exceeds 65536")),
        attempt=1,
        first_seen_at=FIRST_SEEN,
        failed_at=FAILED_AT,
        worker_id="w-1",
        model_version="m-1",
        transport=transport,
    )


@pytest.fixture
def payloads(tmp_path: Path) -> DeadLetterPayloads:
    return DeadLetterPayloads(AudioStorage(StorageSettings()), f"file://{tmp_path}/dead-letters/{{tenant}}")


def test_a_payload_that_fits_is_carried_whole_with_its_size_and_hash() -> None:
    message = kafka_message(b'{"event_id":"e1"}')
    record = fit_dead_letter(message, oversize(message), max_record_bytes=LIMIT)
    envelope, payload = dead_letter_from_record(record.value, record.headers)
    assert payload == message.value
    assert envelope.payload_size == len(message.value)
    assert envelope.payload_sha256 == hashlib.sha256(message.value).hexdigest()
    assert envelope.payload_truncated is False and envelope.payload_uri is None
    assert HEADER_PREFIX + "payload_truncated" not in dict(record.headers)


@pytest.mark.parametrize("with_headers", [True, False], ids=["headers", "body"])
def test_without_a_store_a_bounded_prefix_is_kept_and_marked_truncated(with_headers: bool) -> None:
    message = kafka_message(BIG)
    record = fit_dead_letter(
        message, oversize(message), max_record_bytes=LIMIT, with_headers=with_headers, prefix_bytes=1000
    )
    assert record_bytes(record) <= LIMIT - ENVELOPE_HEADROOM_BYTES
    envelope, payload = dead_letter_from_record(record.value, record.headers)
    assert payload == BIG[:1000]
    assert envelope.payload_truncated is True and envelope.payload_uri is None
    assert envelope.payload_size == len(BIG)
    assert envelope.payload_sha256 == hashlib.sha256(BIG).hexdigest()
    assert envelope.reason == "oversize_event"


@pytest.mark.parametrize("with_headers", [True, False], ids=["headers", "body"])
def test_the_prefix_shrinks_to_what_the_limit_leaves(with_headers: bool) -> None:
    message = kafka_message(BIG)
    limit = 4096
    record = fit_dead_letter(
        message, oversize(message), max_record_bytes=limit, with_headers=with_headers, prefix_bytes=100_000
    )
    assert record_bytes(record) <= limit - ENVELOPE_HEADROOM_BYTES
    _, payload = dead_letter_from_record(record.value, record.headers)
    assert 0 < len(payload) < 3072 and BIG.startswith(payload)


def test_an_envelope_too_large_for_any_limit_still_comes_back_without_a_payload() -> None:
    # the record cannot fit (the original headers alone are over it): Publish will fail and
    # stop the worker with exit 3; building the record must not be what fails
    message = kafka_message(BIG, headers=(("huge", b"h" * 10_000),))
    record = fit_dead_letter(message, oversize(message), max_record_bytes=4096)
    envelope, payload = dead_letter_from_record(record.value, record.headers)
    assert payload == b"" and envelope.payload_truncated is True


@pytest.mark.parametrize("with_headers", [True, False], ids=["headers", "body"])
def test_an_oversize_payload_is_offloaded_by_its_sha256_and_loads_back_exactly(
    payloads: DeadLetterPayloads, tmp_path: Path, with_headers: bool
) -> None:
    message = kafka_message(BIG)
    record = fit_dead_letter(
        message, oversize(message), max_record_bytes=LIMIT, with_headers=with_headers, payloads=payloads
    )
    assert record_bytes(record) <= LIMIT - ENVELOPE_HEADROOM_BYTES
    envelope, payload = dead_letter_from_record(record.value, record.headers)
    digest = hashlib.sha256(BIG).hexdigest()
    assert envelope.payload_truncated is True
    assert envelope.payload_uri == f"file://{tmp_path}/dead-letters/acme/{digest}"
    assert payload == BIG[:4096]  # a peek for `dlq show`
    assert payloads.load("acme", envelope.payload_uri, expected_sha256=digest) == BIG

    # the same poison twice is one object
    again = fit_dead_letter(message, oversize(message), max_record_bytes=LIMIT, payloads=payloads)
    assert dead_letter_from_record(again.value, again.headers)[0].payload_uri == envelope.payload_uri
    assert [p.name for p in (tmp_path / "dead-letters" / "acme").iterdir()] == [digest]


def test_a_store_that_fails_falls_back_to_the_prefix(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_bytes(b"a file where the area should be")
    broken = DeadLetterPayloads(AudioStorage(StorageSettings()), f"file://{tmp_path}/not-a-dir/{{tenant}}")
    message = kafka_message(BIG)
    record = fit_dead_letter(message, oversize(message), max_record_bytes=LIMIT, payloads=broken)
    envelope, payload = dead_letter_from_record(record.value, record.headers)
    assert envelope.payload_truncated is True and envelope.payload_uri is None
    assert payload == BIG[:4096]


def test_loading_is_confined_to_the_tenants_area_and_checked(payloads: DeadLetterPayloads) -> None:
    uri = payloads.store("acme", BIG)
    digest = hashlib.sha256(BIG).hexdigest()
    with pytest.raises(PoisonMessage) as other_tenant:
        payloads.load("globex", uri, expected_sha256=digest)
    assert other_tenant.value.reason == "uri_outside_roots"
    with pytest.raises(PoisonMessage) as elsewhere:
        payloads.load("acme", "file:///etc/passwd", expected_sha256=digest)
    assert elsewhere.value.reason == "uri_outside_roots"
    Path(uri.removeprefix("file://")).write_bytes(b"tampered")
    with pytest.raises(PoisonMessage) as tampered:
        payloads.load("acme", uri, expected_sha256=digest)
    assert tampered.value.reason == "sha256_mismatch"
    Path(uri.removeprefix("file://")).unlink()
    with pytest.raises(PoisonMessage) as gone:
        payloads.load("acme", uri, expected_sha256=digest)
    assert gone.value.reason == "missing_object"


def test_the_payload_area_must_name_the_tenant() -> None:
    with pytest.raises(ValueError, match="tenant"):
        DlqSettings(payload_uri="s3://dead-letters/shared")
    with pytest.raises(ValueError, match="file:// or s3://"):
        DlqSettings(payload_uri="gs://dead-letters/{tenant}")
    assert DlqSettings(payload_uri="s3://dead-letters/{tenant}").payload_uri == "s3://dead-letters/{tenant}"


def test_a_1_0_dead_letter_without_payload_fields_still_reads() -> None:
    message = kafka_message(b"{}")
    record = fit_dead_letter(message, oversize(message), max_record_bytes=LIMIT)
    old = [
        (name, b"1.0" if name == HEADER_PREFIX + "schema_version" else value)
        for name, value in record.headers
        if name not in (HEADER_PREFIX + "payload_size", HEADER_PREFIX + "payload_sha256")
    ]
    envelope, payload = dead_letter_from_record(record.value, old)
    assert envelope.schema_version == "1.0" and envelope.payload_sha256 is None
    assert envelope.payload_truncated is False and payload == b"{}"
