"""The transport conformance suite: the same scenarios on Kafka (Tansu), Pub/Sub (Google's
emulator), Kinesis (moto_server, with the audio in moto's S3; once without and once with the
DynamoDB lease table, "kinesis-leases") and the in-memory broker.

Each scenario is written once against `Harness` (conftest.py) and runs for every
transport. Workers are real `audioguard worker --transport X` processes, except in the
backpressure scenario, which must watch `pause` / `resume` calls and the in-flight count
from inside: there the same worker (`build_worker`) runs on a thread of this process, on
the same real server. On memory every worker runs on a thread (its broker is in-process
only), so scenario 3, which SIGKILLs a worker process, is not applicable there.

    1. N arrivals over two tenants -> N verdicts, each on its own tenant's destination and
       valid against schemas/verdict.schema.json; nothing scored twice.
    2. poison (malformed JSON, a payload claiming another tenant, silent audio) -> a dead
       letter with its reason on the tenant's dead-letter destination; the rest scored.
    3. a worker SIGKILLed after it stored verdicts but before they were acked (it kills
       itself the first time it acks: tests/support/die_before_ack.py) -> the arrivals are
       delivered again within the transport's redelivery bound -> the stored verdict is
       published, the same, and the restarted worker scores only what was never scored.
    4. backpressure: in-flight never exceeds the tenant's bound; the source is paused and
       resumed; every arrival still gets its verdict.
    5. an arrival the source delivers but whose dead letter, payload included, would be over
       the destination's record limit (Kafka's producer 1,000,000 bytes, Kinesis 1 MiB after
       base64) -> the dead letter lands with the payload in the tenant's dead-letter area,
       the exact bytes can be loaded back, and the worker goes on to the next arrival.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from typing import Any

import jsonschema
import numpy as np
import pytest

from consumers.transport import AckToken, Message, OutRecord, Source
from schemas import SCHEMA_DIR
from services.platform import arrival_for
from tests.contract.conftest import Harness, WorkerProcess
from tests.support.audio import encode, speechlike

VERDICT_SCHEMA = json.loads((SCHEMA_DIR / "verdict.schema.json").read_text())


def _only_verdicts_of(verdicts: dict[str, list[dict[str, Any]]], tenant: str) -> None:
    for key, records in verdicts.items():
        assert key.startswith(f"{tenant}:"), f"{key} landed on {tenant}'s destination"
        for verdict in records:
            assert verdict["tenant_id"] == tenant


def test_arrivals_over_two_tenants_become_one_valid_verdict_each(harness: Harness) -> None:
    tenants = harness.tenants(2)
    settings = harness.settings(tenants)
    harness.provision(settings)
    worker = harness.start_worker(settings)
    keys_a, records_a = harness.arrivals(settings, tenants[0], 5)
    keys_b, records_b = harness.arrivals(settings, tenants[1], 3, seed=100)
    harness.publish(settings, records_a + records_b)
    found = harness.wait_for_verdicts(settings, keys_a + keys_b)
    stats = worker.stop()

    assert sorted(found) == sorted(keys_a + keys_b)
    for tenant in tenants:
        per_tenant = harness.verdicts(settings, tenant)
        _only_verdicts_of(per_tenant, tenant)
    for key, records in found.items():
        for verdict in records:
            jsonschema.validate(verdict, VERDICT_SCHEMA)
            assert verdict["idempotency_key"] == key
        assert all(r == records[0] for r in records), f"{key}: two different verdicts"
    assert stats["verdicts"] == len(keys_a) + len(keys_b), stats  # each scored exactly once
    assert stats["dead_letters"] == 0, stats


def test_poison_is_dead_lettered_with_its_reason_and_the_rest_scored(harness: Harness) -> None:
    tenants = harness.tenants(2)
    home, other = tenants
    settings = harness.settings(tenants)
    harness.provision(settings)
    keys, good = harness.arrivals(settings, home, 2)
    silence = encode(np.zeros(16000, dtype="float32"))
    silent_uri = harness.store_audio(home, "silence.wav", silence)
    clip = encode(speechlike(1.0, seed=7))
    other_uri = harness.store_audio(other, "theirs.wav", clip)
    poison = [
        OutRecord(home, "arrivals", b"bad-json", b'{"event_id": "oops", "tenant_id": '),
        # a payload claiming another tenant, published on this tenant's topic
        OutRecord(
            home,
            "arrivals",
            b"claims-other",
            arrival_for(other, other_uri, clip, key=f"{other}:theirs", content_id="theirs"),
        ),
        OutRecord(
            home,
            "arrivals",
            b"silent",
            arrival_for(home, silent_uri, silence, key=f"{home}:silent", content_id="silent"),
        ),
    ]
    worker = harness.start_worker(settings)
    harness.publish(settings, good + poison)
    harness.wait_for_verdicts(settings, keys)

    from dlq.envelope import dead_letter_from_record

    reasons: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(reasons) < len(poison) and time.monotonic() < deadline:
        for value, headers in harness.read(settings, home, "dlq"):
            envelope, payload = dead_letter_from_record(value, headers)
            assert envelope.tenant_id == home
            assert envelope.category == "poison"
            assert envelope.source.transport == harness.transport
            reasons[payload.decode(errors="replace")] = envelope.reason
        time.sleep(0.5)
    stats = worker.stop()

    by_payload = {record.value.decode(errors="replace"): record for record in poison}
    assert set(reasons) == set(by_payload), "every poison arrival must be dead-lettered, unchanged"
    assert reasons[poison[0].value.decode()] == "malformed_json"
    assert reasons[poison[1].value.decode()] == "tenant_mismatch"
    assert reasons[poison[2].value.decode()] == "silent_audio"
    assert harness.read(settings, other, "dlq") == [], "poison must stay on its own tenant"
    # at-least-once: a transport may deliver a poison arrival twice, never less than once
    assert stats["dead_letters"] >= len(poison) and stats["verdicts"] == len(keys), stats


@pytest.mark.cross_process
def test_a_worker_killed_before_acking_yields_the_same_verdicts_without_scoring_twice(
    harness: Harness,
) -> None:
    tenants = harness.tenants(2)
    settings = harness.settings(tenants)
    harness.provision(settings)
    keys_a, records_a = harness.arrivals(settings, tenants[0], 6)
    keys_b, records_b = harness.arrivals(settings, tenants[1], 6, seed=100)
    keys = keys_a + keys_b
    harness.publish(settings, records_a + records_b)

    # the first worker SIGKILLs itself the first time it is about to ack: its stored and
    # published verdicts are unacked, every time, however loaded the machine is
    first = harness.start_worker(settings, die_before_ack=True)
    assert isinstance(first, WorkerProcess)
    deadline = time.monotonic() + 120
    while first.alive():
        assert time.monotonic() < deadline, "the first worker acked nothing in 120 s"
        time.sleep(0.05)
    killed_at = time.time()
    print(f"\n{harness.transport}: first worker SIGKILLed itself before acking, seen at {killed_at:.3f}")
    assert first.process.returncode == -signal.SIGKILL, first.output()[-3000:]
    stored = harness.stored_keys(settings)  # final: the process is gone
    assert 0 < len(stored) <= len(keys)
    with sqlite3.connect(f"file:{harness.store_path(tenants)}?mode=ro", uri=True) as db:
        stored_verdicts = {
            json.loads(value)["idempotency_key"]: json.loads(value)
            for (value,) in db.execute("SELECT value FROM verdicts")
        }

    harness.forget_dead_connections(settings)

    second = harness.start_worker(settings)
    assert isinstance(second, WorkerProcess)
    # wait for the successor's own answers, not for verdicts to exist: the first worker
    # published what it stored, and the test is about what the successor does with the
    # redeliveries. Nothing was acked, so every arrival comes back to it.
    took = harness.wait_for_successor(
        settings, second, killed_at, new_verdicts=len(keys) - len(stored), duplicates=len(stored)
    )
    print(took.line(harness.transport))
    found = harness.wait_for_verdicts(settings, keys, timeout=30)
    stats = second.stop()

    for key in keys:
        records = found[key]
        assert all(r == records[0] for r in records), f"{key}: re-delivery changed the verdict"
        if key in stored_verdicts:
            assert records[0] == stored_verdicts[key], f"{key}: not the verdict stored before the kill"
    # nothing the first worker scored is scored again: the rest is scored exactly once
    assert stats["verdicts"] == len(keys) - len(stored), (stats, len(stored))
    # and every arrival the killed worker scored came back and was answered from the store
    assert stats["duplicates"] >= len(stored), (stats, len(stored))


class _WatchedSource(Source):
    """Delegates to the real source and records what backpressure did to it."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.calls: list[tuple[str, frozenset[str]]] = []
        self.outstanding: set[AckToken] = set()
        self.max_outstanding = 0
        self.lock = threading.Lock()

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        messages = self.inner.poll(max_messages, timeout)
        with self.lock:
            self.outstanding.update(m.token for m in messages)
            self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
        return messages

    def pause(self, tenants: Any) -> None:
        tenants = frozenset(tenants)
        if tenants:
            self.calls.append(("pause", tenants))
        self.inner.pause(tenants)

    def resume(self, tenants: Any) -> None:
        tenants = frozenset(tenants)
        if tenants:
            self.calls.append(("resume", tenants))
        self.inner.resume(tenants)

    def ack(self, tokens: Any) -> None:
        self.inner.ack(tokens)
        with self.lock:
            self.outstanding.difference_update(tokens)

    def drop(self, tokens: Any) -> None:
        self.inner.drop(tokens)
        with self.lock:
            self.outstanding.difference_update(tokens)

    def close(self, timeout: float) -> None:
        self.inner.close(timeout)

    def paused(self) -> frozenset[str]:
        return self.inner.paused()

    def ready(self) -> bool:
        return self.inner.ready()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_backpressure_bounds_in_flight_and_pauses_then_resumes_the_source(
    harness: Harness, detector: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consumers.transports.registry
    from services.tools.worker import build_worker

    tenants = harness.tenants(1)
    bound = 2
    settings = harness.settings(
        tenants,
        tenant_defaults={"max_in_flight": bound},
        batch={"max_windows": 4, "max_wait_ms": 20},
        drain_seconds=5.0,
        # pause once more than 4 are held (the default 500 is far above this scenario's 12)
        max_held_events=4,
    )
    harness.provision(settings)
    keys, records = harness.arrivals(settings, tenants[0], 12)
    harness.publish(settings, records)

    watched: list[_WatchedSource] = []
    real_open = consumers.transports.registry.open_transport

    def open_watched(settings: Any, **options: Any) -> Any:
        source, sink = real_open(settings, **options)
        watched.append(_WatchedSource(source))
        return watched[-1], sink

    monkeypatch.setattr(consumers.transports.registry, "open_transport", open_watched)
    worker = build_worker(settings, detector=detector)
    in_flight: list[int] = []
    stop = threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while worker.pipeline.stats.acked < len(keys) and time.monotonic() < deadline:
            in_flight.append(worker.pipeline.pending())
            time.sleep(0.005)
    finally:
        stop.set()
        runner.join(60)
    source = watched[0]
    found = harness.wait_for_verdicts(settings, keys, timeout=30)
    assert sorted(found) == sorted(keys)
    assert max(in_flight) <= bound, f"in-flight reached {max(in_flight)} with a bound of {bound}"
    pauses = [i for i, (kind, ts) in enumerate(source.calls) if kind == "pause" and tenants[0] in ts]
    resumes = [i for i, (kind, ts) in enumerate(source.calls) if kind == "resume" and tenants[0] in ts]
    assert pauses, "the full tenant was never paused"
    assert resumes and resumes[-1] > pauses[0], "the paused tenant was never resumed"
    print(
        f"\n{harness.transport}: max in flight {max(in_flight)} (bound {bound}), "
        f"{len(pauses)} pauses / {len(resumes)} resumes, "
        f"max outstanding at the source {source.max_outstanding}"
    )


#: per transport: an arrival the platform may publish there, whose dead letter would not fit
#: with its payload (Pub/Sub's 10 MB limit takes it whole: the scenario checks that too)
OVERSIZE_ARRIVAL_BYTES = {"kafka": 1_039_998, "memory": 1_039_998, "kinesis": 1_000_000, "pubsub": 1_039_998}


def test_an_oversize_arrivals_dead_letter_fits_and_its_payload_comes_back_exactly(harness: Harness) -> None:
    import hashlib

    from consumers.transports.registry import transport
    from dlq.envelope import ENVELOPE_HEADROOM_BYTES, dead_letter_from_record
    from services.settings import DlqSettings
    from services.storage import AudioStorage, DeadLetterPayloads

    tenants = harness.tenants(1)
    tenant = tenants[0]
    if harness.transport == "kinesis":
        area = "s3://contract-dead-letters/{tenant}"
        # the area is provisioned (terraform), not created by the worker
        AudioStorage(harness.settings(tenants).storage).put(b"", "s3://contract-dead-letters/.keep")
    else:
        area = f"file://{harness.workdir / 'dead-letters'}/{{tenant}}"
    settings = harness.settings(tenants, dlq=DlqSettings(payload_uri=area))
    harness.provision(settings)
    size = OVERSIZE_ARRIVAL_BYTES[harness.transport]
    document = json.loads(
        arrival_for(tenant, f"file:///nowhere/{tenant}.wav", b"x", key=f"{tenant}:big", content_id="big")
    )
    document["attributes"] = {"pad": ""}
    document["attributes"]["pad"] = "p" * (size - len(json.dumps(document).encode()))
    big = json.dumps(document).encode()
    assert len(big) == size
    keys, good = harness.arrivals(settings, tenant, 1)
    # the platform's producer may send more than the worker's default producer (Kafka's
    # broker takes 1,048,588 bytes); the worker keeps librdkafka's 1,000,000
    platform = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"extra": {"message.max.bytes": "2000000"}})}
    )
    worker = harness.start_worker(settings, AUDIOGUARD_DLQ__PAYLOAD_URI=area)
    harness.publish(platform, [OutRecord(tenant, "arrivals", b"big", big, ordering_key="big"), *good])
    harness.wait_for_verdicts(settings, keys)  # behind the oversize one: the worker went on

    letters: list[tuple[Any, bytes, int]] = []
    deadline = time.monotonic() + 60
    while not letters and time.monotonic() < deadline:
        letters = [
            (*dead_letter_from_record(value, headers), len(value) + sum(len(n) + len(v) for n, v in headers))
            for value, headers in harness.read(settings, tenant, "dlq")
        ]
        time.sleep(0.5)
    stats = worker.stop()
    assert letters, "the oversize arrival was not dead-lettered"
    limit = transport(harness.transport).max_record_bytes(settings)
    for envelope, carried, record_size in letters:
        assert envelope.reason == "oversize_event"
        assert envelope.payload_size == size and envelope.payload_sha256 == hashlib.sha256(big).hexdigest()
        assert record_size <= limit - ENVELOPE_HEADROOM_BYTES
        if harness.transport == "pubsub":
            assert not envelope.payload_truncated and carried == big  # 10 MB: it fits whole
            continue
        assert envelope.payload_truncated and envelope.payload_uri is not None
        assert big.startswith(carried)
        payloads = DeadLetterPayloads(AudioStorage(settings.storage), area)
        assert payloads.load(tenant, envelope.payload_uri, expected_sha256=envelope.payload_sha256) == big
    assert stats["verdicts"] == 1 and stats["dead_letters"] >= 1, stats
