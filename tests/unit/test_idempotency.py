"""Idempotency conflicts and the checks a repeated key may not skip (issue 15), on the real
worker over the in-memory transport (docs/idempotency.md)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from consumers.steps import idempotency_conflict
from consumers.transports.memory import MemoryBroker
from dlq.envelope import dead_letter_from_record
from schemas import AudioArrival
from services.platform import arrival_for
from tests.support.audio import encode, speechlike
from tests.support.memory import (
    ConstantDetector,
    Uploads,
    build_memory_worker,
    drive,
    memory_settings,
    records,
)

TENANT = "acme"


def event(
    uri: str, data: bytes, *, key: str = "acme:up-1", content_id: str = "up-1", **changes: Any
) -> bytes:
    document = json.loads(arrival_for(TENANT, uri, data, key=key, content_id=content_id))
    document.update(changes)
    return json.dumps(document).encode()


def run(broker: tuple[str, MemoryBroker], tmp_path: Path, events: list[bytes]) -> tuple[Any, list[str]]:
    """Publish `events` in order through one worker; (stats, outcome per event in order)."""
    name, memory = broker
    detector = ConstantDetector()
    settings = memory_settings(name, [TENANT], tmp_path)
    worker = build_memory_worker(settings, memory, detector)
    uploads = Uploads(memory, tmp_path)
    try:
        for i, value in enumerate(events, start=1):
            # one at a time: each sees the store as its predecessors left it
            uploads.raw(TENANT, value, key=b"k")
            drive(worker, lambda i=i: worker.pipeline.stats.acked == i)
    finally:
        worker.shutdown()
    dead = {}
    for _k, value, headers in records(memory, "dlq", TENANT):
        envelope, payload = dead_letter_from_record(value, headers)
        dead[payload] = envelope.reason
    return worker.pipeline.stats, [dead.get(value, "answered") for value in events]


def clip(tmp_path: Path, name: str, seed: int) -> tuple[str, bytes]:
    data = encode(speechlike(1.0, seed=seed))
    path = tmp_path / TENANT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"file://{path}", data


def test_a_repeated_key_with_other_content_is_an_idempotency_conflict(broker: Any, tmp_path: Path) -> None:
    uri, data = clip(tmp_path, "a.wav", 1)
    other_uri, other_data = clip(tmp_path, "b.wav", 2)
    first = event(uri, data)
    same_again = event(uri, data)  # a platform's retry: new event id, same upload
    other_content_id = event(uri, data, content_id="up-2")
    other_file = event(other_uri, other_data)
    other_sha = event(uri, data, sha256=hashlib.sha256(b"something else").hexdigest())
    stats, outcomes = run(broker, tmp_path, [first, same_again, other_content_id, other_file, other_sha])
    assert outcomes == [
        "answered",
        "answered",
        "idempotency_conflict",
        "idempotency_conflict",
        "idempotency_conflict",
    ]
    assert (stats.verdicts, stats.duplicates, stats.dead_letters) == (1, 1, 3)


def test_a_repeated_key_is_held_to_the_uri_rules_before_the_store_answers(
    broker: Any, tmp_path: Path
) -> None:
    uri, data = clip(tmp_path, "a.wav", 1)
    outside = event("file:///etc/hostname", data)
    traversal = event(f"file://{tmp_path / TENANT}/../../etc/passwd", data)
    other_scheme = event("https://example.org/a.wav", data)
    _stats, outcomes = run(broker, tmp_path, [event(uri, data), outside, traversal, other_scheme])
    # before the fix each of these got the first verdict and its URI was never looked at
    assert outcomes == ["answered", "uri_outside_roots", "path_traversal", "unsupported_scheme"]


def test_upper_case_sha256_is_the_same_digest(broker: Any, tmp_path: Path) -> None:
    uri, data = clip(tmp_path, "a.wav", 1)
    upper = hashlib.sha256(data).hexdigest().upper()
    stats, outcomes = run(broker, tmp_path, [event(uri, data, sha256=upper), event(uri, data)])
    assert outcomes == ["answered", "answered"]
    assert (stats.verdicts, stats.duplicates) == (1, 1)


def test_absurd_submitted_at_and_a_wrong_byte_size_are_refused(broker: Any, tmp_path: Path) -> None:
    uri, data = clip(tmp_path, "a.wav", 1)
    soon = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()  # within the default 300 s skew
    far = datetime(9999, 1, 1, tzinfo=UTC).isoformat()
    events = [
        event(uri, data, key="acme:far", submitted_at=far),
        event(uri, data, key="acme:soon", submitted_at=soon),
        event(uri, data, key="acme:size", byte_size=len(data) + 1),
        event(uri, data, key="acme:size0", byte_size=0),
    ]
    _stats, outcomes = run(broker, tmp_path, events)
    assert outcomes == ["submitted_in_future", "answered", "byte_size_mismatch", "byte_size_mismatch"]


def test_a_field_counts_only_when_both_sides_have_it() -> None:
    arrival = AudioArrival.model_validate_json(
        arrival_for(TENANT, "file:///srv/a.wav", b"x", key="acme:k", content_id="c1")
    )
    legacy = json.dumps({"content_id": "c1"}).encode()  # stored before verdicts recorded uri/sha256
    assert idempotency_conflict(arrival, legacy) is None
    no_sha = arrival.model_copy(update={"sha256": None})
    stored = json.dumps({"content_id": "c1", "audio_uri": "file:///srv/a.wav", "sha256": "0" * 64}).encode()
    assert idempotency_conflict(no_sha, stored) is None
    conflict = idempotency_conflict(arrival, stored)
    assert conflict is not None and conflict.reason == "idempotency_conflict"
    assert "sha256" in conflict.message and "0000" not in conflict.message
