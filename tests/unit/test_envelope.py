"""The dead-letter envelope: categories, stack digests, both wire forms and their round trips."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from consumers.transport import Message
from dlq.envelope import (
    ENVELOPE_FIELDS,
    HEADER_PREFIX,
    MAX_HEADER_VALUE_BYTES,
    REPLAY_COUNT_HEADER,
    REPLAY_ID_HEADER,
    build_dead_letter,
    dead_letter_from_record,
    dead_letter_record,
    envelope_header,
    replay_headers,
    stack_digest,
)
from schemas import DeadLetter
from services.errors import FatalError, PoisonMessage, ResourceExhausted, RetryableError

FIRST_SEEN = datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)
FAILED_AT = datetime(2026, 11, 22, 6, 0, 5, tzinfo=UTC)
# not UTF-8, not JSON, with NULs and every byte value: must survive byte for byte
ODD_PAYLOAD = b"\xff\xfe\x00{not json" + bytes(range(256))


def kafka_message(value: bytes = b'{"event_id":"e1"}', **overrides: object) -> Message:
    fields: dict[str, object] = {
        "token": ("audioguard.arrivals.acme", 3, 42),
        "tenant": "acme",
        "topic": "audioguard.arrivals.acme",
        "value": value,
        "key": b"upload-1",
        "headers": (("traceparent", b"00-abc-def-01"), ("content-type", b"application/json")),
        "timestamp": 1_795_000_000.5,
        "coordinates": {"partition": 3, "offset": 42},
    }
    fields.update(overrides)
    return Message(**fields)  # type: ignore[arg-type]


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:  # noqa: BLE001 - we want the traceback attached
        return caught


def envelope(
    message: Message, error: BaseException, transport: str = "kafka", attempt: int = 2
) -> DeadLetter:
    return build_dead_letter(
        message,
        error,
        attempt=attempt,
        first_seen_at=FIRST_SEEN,
        worker_id="worker-7",
        model_version="1.2.0",
        transport=transport,
        failed_at=FAILED_AT,
    )


@pytest.mark.parametrize(
    ("error", "category", "reason", "error_class"),
    [
        (
            PoisonMessage("schema", "field audio_uri missing"),
            "poison",
            "schema",
            "services.errors.PoisonMessage",
        ),
        (
            RetryableError("store_unavailable"),
            "retries_exhausted",
            "store_unavailable",
            "services.errors.RetryableError",
        ),
        (ResourceExhausted("cuda_oom"), "retries_exhausted", "cuda_oom", "services.errors.ResourceExhausted"),
        (FatalError("auth"), "fatal", "auth", "services.errors.FatalError"),
        (KeyError("x"), "poison", "internal_error", "KeyError"),
        (ZeroDivisionError(), "poison", "internal_error", "ZeroDivisionError"),
    ],
)
def test_category_reason_and_class(error: Exception, category: str, reason: str, error_class: str) -> None:
    dead = envelope(kafka_message(), raised(error))
    assert (dead.category, dead.reason, dead.error_class) == (category, reason, error_class)
    assert dead.error_message  # never empty, even for ZeroDivisionError()


def test_envelope_fields_from_the_message() -> None:
    dead = envelope(kafka_message(), raised(PoisonMessage("schema", "field audio_uri missing")))
    assert dead.tenant_id == "acme"
    assert dead.error_message == "field audio_uri missing"
    assert dead.attempt == 2
    assert dead.source.transport == "kafka"
    assert (dead.source.topic, dead.source.partition, dead.source.offset) == (
        "audioguard.arrivals.acme",
        3,
        42,
    )
    assert dead.source.timestamp == datetime.fromtimestamp(1_795_000_000.5, UTC)
    assert (dead.first_seen_at, dead.last_failed_at) == (FIRST_SEEN, FAILED_AT)
    assert (dead.worker_id, dead.model_version) == ("worker-7", "1.2.0")
    assert (dead.replay_count, dead.replay_id) == (0, None)


def test_pubsub_and_kinesis_coordinates() -> None:
    pubsub = kafka_message(
        coordinates={"ack_id": "ack-1", "message_id": 123456},
        topic="arrivals-acme",
        key=None,
        delivery_attempt=5,
    )
    dead = envelope(
        pubsub, raised(PoisonMessage("schema")), transport="pubsub", attempt=pubsub.delivery_attempt
    )
    assert (dead.source.ack_id, dead.source.message_id, dead.attempt) == ("ack-1", "123456", 5)
    kinesis = kafka_message(coordinates={"shard_id": "shardId-000000000000", "sequence_number": "4959"})
    dead = envelope(kinesis, raised(PoisonMessage("schema")), transport="kinesis")
    assert (dead.source.shard_id, dead.source.sequence_number) == ("shardId-000000000000", "4959")
    with pytest.raises(ValueError, match="unknown transport"):
        envelope(kinesis, PoisonMessage("schema"), transport="sqs")


def test_odd_coordinates_are_skipped_not_fatal() -> None:
    message = kafka_message(coordinates={"partition": "not-a-number", "offset": None, "weird": object()})
    dead = envelope(message, raised(PoisonMessage("schema")))
    assert dead.source.partition is None and dead.source.offset is None


def test_long_messages_are_cut_to_the_contract_limit() -> None:
    dead = envelope(kafka_message(), raised(ValueError("x" * 10_000)))
    assert len(dead.error_message) == 4000 and dead.error_message.endswith("…")


def test_naive_first_seen_is_utc() -> None:
    dead = build_dead_letter(
        kafka_message(),
        PoisonMessage("schema"),
        attempt=0,
        first_seen_at=datetime(2026, 1, 1, 12, 0),
        worker_id="w",
        model_version="m",
        transport="kafka",
    )
    assert dead.first_seen_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert dead.attempt == 1  # attempts count from 1
    assert dead.last_failed_at.tzinfo is not None


# -- stack digest ----------------------------------------------------------------------------
def _fail_in_fetch(message: str) -> None:
    raise RetryableError("storage_unavailable", message)


def _fail_elsewhere(message: str) -> None:
    raise RetryableError("storage_unavailable", message)


def _caught(fn: object, message: str) -> BaseException:
    try:
        fn(message)  # type: ignore[operator]
    except BaseException as error:  # noqa: BLE001
        return error
    raise AssertionError("did not raise")


def test_stack_digest_groups_same_place_ignoring_message() -> None:
    first = stack_digest(_caught(_fail_in_fetch, "s3://bucket/a.wav timed out"))
    second = stack_digest(_caught(_fail_in_fetch, "s3://bucket/b.wav connection reset"))
    elsewhere = stack_digest(_caught(_fail_elsewhere, "s3://bucket/a.wav timed out"))
    assert first == second
    assert first != elsewhere
    assert len(first) == 40 and int(first, 16) >= 0


def test_stack_digest_is_stable_across_line_edits() -> None:
    # the same function compiled at a different line number (as after an edit above it)
    source = "def boom():\n    raise ValueError('x')\n"
    digests = []
    for blank_lines in (0, 30):
        namespace: dict[str, object] = {}
        exec(compile("\n" * blank_lines + source, "services/fake.py", "exec"), namespace)
        boom = namespace["boom"]
        digests.append(stack_digest(_caught(lambda _m, boom=boom: boom(), "")))  # type: ignore[misc, operator]
    assert digests[0] == digests[1]


def test_stack_digest_follows_the_cause() -> None:
    def wrap(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as error:
                raise RetryableError("store_unavailable") from error
        except RetryableError as outer:
            return outer

    assert stack_digest(wrap(ConnectionError("a"))) != stack_digest(wrap(TimeoutError("a")))
    assert stack_digest(wrap(ConnectionError("a"))) == stack_digest(wrap(ConnectionError("b")))


def test_stack_digest_of_an_error_never_raised() -> None:
    assert stack_digest(PoisonMessage("schema")) == stack_digest(PoisonMessage("schema", "other"))
    assert stack_digest(PoisonMessage("schema")) != stack_digest(FatalError("schema"))


# -- wire forms --------------------------------------------------------------------------------
def test_header_form_keeps_payload_and_original_headers() -> None:
    message = kafka_message(value=ODD_PAYLOAD)
    dead = envelope(message, raised(PoisonMessage("undecodable", "not JSON")))
    record = dead_letter_record(message, dead)
    assert record.destination == "dlq" and record.tenant == "acme"
    assert record.key == b"upload-1"
    assert record.value == ODD_PAYLOAD
    names = [name for name, _ in record.headers]
    assert names[:2] == ["traceparent", "content-type"]
    assert dict(record.headers)["ag-dlq-reason"] == b"undecodable"
    assert dict(record.headers)["ag-dlq-category"] == b"poison"
    assert json.loads(dict(record.headers)["ag-dlq-source"])["offset"] == 42
    assert all(name.startswith(HEADER_PREFIX) for name in names[2:])
    assert "ag-dlq-payload_b64" not in names
    # every header value is text, as Pub/Sub attributes must be
    for _, value in record.headers:
        value.decode("utf-8")


def test_header_form_round_trip() -> None:
    message = kafka_message(value=ODD_PAYLOAD)
    dead = envelope(message, raised(RetryableError("storage_unavailable", "timeout after 10 s")), attempt=4)
    record = dead_letter_record(message, dead)
    back, payload = dead_letter_from_record(record.value, record.headers)
    assert payload == ODD_PAYLOAD
    assert back == dead


def test_body_form_round_trip() -> None:
    message = kafka_message(value=ODD_PAYLOAD, coordinates={"shard_id": "s-0", "sequence_number": "1"})
    dead = envelope(message, raised(PoisonMessage("schema")), transport="kinesis")
    record = dead_letter_record(message, dead, with_headers=False)
    assert record.headers == ()
    body = json.loads(record.value)
    assert base64.b64decode(body["payload_b64"]) == ODD_PAYLOAD
    assert body["reason"] == "schema"
    back, payload = dead_letter_from_record(record.value, record.headers)
    assert payload == ODD_PAYLOAD
    assert back.model_copy(update={"payload_b64": None}) == dead


def test_empty_payload_round_trips_in_both_forms() -> None:
    message = kafka_message(value=b"")
    dead = envelope(message, raised(PoisonMessage("schema")))
    for with_headers in (True, False):
        record = dead_letter_record(message, dead, with_headers=with_headers)
        assert dead_letter_from_record(record.value, record.headers)[1] == b""


def test_long_error_message_fits_a_pubsub_attribute() -> None:
    message = kafka_message()
    dead = envelope(message, raised(ValueError("é" * 3000)))
    record = dead_letter_record(message, dead)
    header = dict(record.headers)["ag-dlq-error_message"]
    assert len(header) <= MAX_HEADER_VALUE_BYTES
    text = header.decode("utf-8")  # not cut inside a character
    assert text.startswith("ééé") and text.endswith("…")
    back, _ = dead_letter_from_record(record.value, record.headers)
    assert back.error_message == text
    # the body form has room for the whole (contract-limited) message
    body_back, _ = dead_letter_from_record(
        *_record_parts(dead_letter_record(message, dead, with_headers=False))
    )
    assert body_back.error_message == dead.error_message


def _record_parts(record: object) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    return record.value, record.headers  # type: ignore[attr-defined]


def test_record_key_falls_back_to_idempotency_key_then_payload_hash() -> None:
    message = kafka_message(key=None)
    dead = envelope(message, raised(PoisonMessage("schema")))
    assert dead_letter_record(message, dead, idempotency_key="idem-1").key == b"idem-1"
    hashed = dead_letter_record(message, dead).key
    assert len(hashed) == 64 and hashed == dead_letter_record(message, dead).key


def test_a_second_dead_letter_replaces_the_first_envelope() -> None:
    message = kafka_message()
    first = dead_letter_record(message, envelope(message, raised(PoisonMessage("schema"))))
    again = kafka_message(headers=first.headers)
    second = dead_letter_record(again, envelope(again, raised(PoisonMessage("tenant_mismatch"))))
    names = [name for name, _ in second.headers]
    assert len(names) == len(set(names)), "duplicate headers"
    assert dict(second.headers)["ag-dlq-reason"] == b"tenant_mismatch"


def test_replay_marks_are_carried_forward() -> None:
    message = kafka_message()
    original = envelope(message, raised(PoisonMessage("schema")))
    record = dead_letter_record(message, original)
    headers = replay_headers(original, record.headers, "replay-2026-11-22-a")
    assert not any(name.startswith(HEADER_PREFIX) for name, _ in headers)
    assert (REPLAY_COUNT_HEADER, b"1") in headers and (REPLAY_ID_HEADER, b"replay-2026-11-22-a") in headers
    assert ("traceparent", b"00-abc-def-01") in headers
    replayed = kafka_message(headers=headers)
    again = envelope(replayed, raised(PoisonMessage("schema")))
    assert (again.replay_count, again.replay_id) == (1, "replay-2026-11-22-a")
    # replaying a second time counts up and replaces the old marks
    second = replay_headers(again, dead_letter_record(replayed, again).headers, "replay-b")
    assert [v for n, v in second if n == REPLAY_COUNT_HEADER] == [b"2"]
    assert [v for n, v in second if n == REPLAY_ID_HEADER] == [b"replay-b"]


def test_mangled_replay_count_does_not_stop_the_dead_letter() -> None:
    message = kafka_message(headers=((REPLAY_COUNT_HEADER, b"\xffx"), (REPLAY_ID_HEADER, b"r1")))
    dead = envelope(message, raised(PoisonMessage("schema")))
    assert (dead.replay_count, dead.replay_id) == (0, "r1")


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b'{"event_id": "e1"}', ()),  # a plain arrival, no envelope anywhere
        (b"\xff\xfe", ()),
        (b"x", (("ag-dlq-reason", b"schema"),)),  # a partial envelope
    ],
)
def test_not_a_dead_letter_is_rejected_with_a_reason(
    value: bytes, headers: tuple[tuple[str, bytes], ...]
) -> None:
    with pytest.raises(PoisonMessage) as caught:
        dead_letter_from_record(value, headers)
    assert caught.value.reason == "bad_dead_letter"


# the attributes Google's Pub/Sub emulator put on a message its dead-letter policy forwarded
# (captured from a real run: 5 nacks on arrivals-acme-workers, max_delivery_attempts=5)
PUBSUB_FORWARDED = (
    ("ag-replay-id", b"r1"),
    ("CloudPubSubDeadLetterSourceDeliveryCount", b"5"),
    ("CloudPubSubDeadLetterSourceSubscription", b"arrivals-acme-workers"),
    ("CloudPubSubDeadLetterSourceSubscriptionProject", b"probe"),
    ("CloudPubSubDeadLetterSourceTopicPublishTime", b"2026-11-22T06:41:48.328Z"),
)


def test_a_message_forwarded_by_the_pubsub_policy_is_read() -> None:
    dead, payload = dead_letter_from_record(ODD_PAYLOAD, PUBSUB_FORWARDED)
    assert payload == ODD_PAYLOAD
    assert (dead.tenant_id, dead.category, dead.reason) == (
        "acme",
        "retries_exhausted",
        "max_delivery_attempts",
    )
    assert dead.attempt == 5
    assert (dead.source.transport, dead.source.topic) == ("pubsub", "arrivals-acme")
    assert dead.first_seen_at == datetime(2026, 11, 22, 6, 41, 48, 328000, tzinfo=UTC)
    assert dead.replay_id == "r1"
    assert "5 delivery attempts" in dead.error_message


@pytest.mark.parametrize(
    ("subscription", "published", "tenant", "first_seen"),
    [
        (
            b"projects/p/subscriptions/arrivals-globex-workers",
            b"2026-11-22T06:41:48.123456789Z",
            "globex",
            datetime(2026, 11, 22, 6, 41, 48, 123456, tzinfo=UTC),
        ),
        (b"some-other-sub", b"yesterday", "unknown", None),
    ],
)
def test_pubsub_policy_variants(
    subscription: bytes, published: bytes, tenant: str, first_seen: object
) -> None:
    headers = (
        ("CloudPubSubDeadLetterSourceSubscription", subscription),
        ("CloudPubSubDeadLetterSourceTopicPublishTime", published),
    )
    dead, _ = dead_letter_from_record(b"x", headers)
    assert dead.tenant_id == tenant and dead.attempt == 1
    if first_seen is not None:
        assert dead.first_seen_at == first_seen
    else:
        assert dead.first_seen_at.tzinfo is not None  # unparsable time: falls back to now


def test_our_envelope_wins_over_pubsub_policy_attributes() -> None:
    message = kafka_message()
    record = dead_letter_record(message, envelope(message, raised(PoisonMessage("schema"))))
    dead, _ = dead_letter_from_record(record.value, (*record.headers, *PUBSUB_FORWARDED))
    assert dead.reason == "schema"


def test_unknown_envelope_headers_from_a_newer_minor_version_are_ignored() -> None:
    message = kafka_message()
    record = dead_letter_record(message, envelope(message, raised(PoisonMessage("schema"))))
    back, _ = dead_letter_from_record(record.value, (*record.headers, ("ag-dlq-new_field", b"x")))
    assert back.reason == "schema"


def test_header_names_are_in_one_place() -> None:
    assert envelope_header("reason") == "ag-dlq-reason"
    assert "payload_b64" not in ENVELOPE_FIELDS
    with pytest.raises(KeyError):
        envelope_header("payload_b64")
    assert set(ENVELOPE_FIELDS) == set(DeadLetter.model_fields) - {"payload_b64"}


def test_public_names_do_not_drift() -> None:
    import dlq

    assert sorted(dlq.__all__) == sorted(
        [
            "HEADER_PREFIX",
            "REPLAY_COUNT_HEADER",
            "REPLAY_ID_HEADER",
            "DlqBreaker",
            "build_dead_letter",
            "dead_letter_from_record",
            "dead_letter_record",
            "replay_headers",
            "stack_digest",
        ]
    )
    assert all(hasattr(dlq, name) for name in dlq.__all__)
