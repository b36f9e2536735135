"""The shared arrivals topic for the long tail of tenants, on the memory transport.

On `audioguard.arrivals._shared` the topic proves nothing: the tenant is the signed
`ag-tenant` header (consumers.tenancy.SharedTopic). These tests check the signature rules,
that valid records go to their tenant's own verdict / dlq topics and bad ones to
`audioguard.dlq._shared` with a reason, that pausing one shared tenant holds only its
records, and that moving a tenant between dedicated and shared re-scores nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumers.tenancy import (
    SHARED,
    SHARED_ARRIVALS_TOPIC,
    SharedTopic,
    kafka_topic,
    tenant_of_kafka_topic,
    tenant_of_record,
)
from consumers.transports.memory import (
    MemoryBroker,
    MemorySource,
    read_memory_topic,
)
from dlq.breaker import DlqBreaker
from dlq.envelope import dead_letter_from_record
from services.platform import arrival_for_uri, shared_headers, sign_tenant
from tests.support.memory import (
    ConstantDetector,
    Uploads,
    build_memory_worker,
    memory_settings,
    records,
    registered_broker,
)
from tests.support.memory import drive as drive_worker

SECRETS = {"acme": b"acme-secret", "tiny": b"tiny-secret"}
SHARED_TOPIC = SharedTopic(frozenset(SECRETS), SECRETS)


def _arrival(tenant: str, key: str, uri: str = "file:///x.wav") -> bytes:
    return arrival_for_uri(tenant, uri, key=key, content_id=key)


# -- the signature rules ----------------------------------------------------------------
def test_a_signed_record_is_its_tenants():
    value = _arrival("acme", "k1")
    assert SHARED_TOPIC.resolve(shared_headers("acme", SECRETS["acme"], value), value) == ("acme", None)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([], "tenant_unsigned"),
        ([("ag-tenant", b"acme")], "tenant_unsigned"),
        # a tenant not configured as shared, even with a signature by some key
        ([("ag-tenant", b"other"), ("ag-tenant-signature", b"00")], "tenant_not_shared"),
        # signed with tiny's key but claiming acme
        ("tiny-key", "tenant_signature"),
        ([("ag-tenant", b"acme"), ("ag-tenant-signature", b"not-hex")], "tenant_signature"),
        ([("ag-tenant", b"\xff"), ("ag-tenant-signature", b"00")], "tenant_unsigned"),
    ],
)
def test_anything_unproven_is_refused_with_a_reason(headers: Any, reason: str):
    value = _arrival("acme", "k1")
    if headers == "tiny-key":
        signature = sign_tenant(SECRETS["tiny"], "acme", "k1", value)
        headers = [("ag-tenant", b"acme"), ("ag-tenant-signature", signature.encode())]
    tenant, rejection = SHARED_TOPIC.resolve(headers, value)
    assert tenant == SHARED
    assert rejection is not None and rejection[0] == reason


def test_the_signature_covers_the_payload_and_its_tenant():
    value = _arrival("acme", "k1")
    headers = shared_headers("acme", SECRETS["acme"], value)
    tampered = value.replace(b"file:///x.wav", b"file:///y.wav")
    assert SHARED_TOPIC.resolve(headers, tampered)[1][0] == "tenant_signature"  # type: ignore[index]
    # signed by acme's key, but the event inside claims tiny
    claims_other = _arrival("tiny", "k2")
    headers = shared_headers("acme", SECRETS["acme"], claims_other)
    assert SHARED_TOPIC.resolve(headers, claims_other)[1][0] == "tenant_mismatch"  # type: ignore[index]
    # not JSON at all: nothing to verify
    assert SHARED_TOPIC.resolve(headers, b"\x00garbage")[1][0] == "tenant_unverifiable"  # type: ignore[index]
    # a secret missing for a shared tenant
    no_key = SharedTopic(frozenset({"acme"}), {})
    assert no_key.resolve(headers, value)[1][0] == "tenant_unknown_key"  # type: ignore[index]


def test_dedicated_topics_keep_the_topics_tenant():
    assert tenant_of_record("audioguard.arrivals.acme", [], b"", None) == ("acme", None)
    assert tenant_of_record("audioguard.verdicts.x", [], b"", None) == ("x", None)
    assert tenant_of_kafka_topic(SHARED_ARRIVALS_TOPIC) == SHARED
    # a shared record with no shared tenants configured is refused, not dropped
    assert tenant_of_record(SHARED_ARRIVALS_TOPIC, [], b"", None)[0] == SHARED
    assert kafka_topic("dlq", SHARED) == "audioguard.dlq._shared"
    with pytest.raises(ValueError):
        kafka_topic("verdicts", SHARED)


# -- the worker on the shared topic -------------------------------------------------------
@pytest.fixture
def broker():
    with registered_broker() as pair:
        yield pair


def _settings(name: str, tmp_path: Path, *, dedicated: list[str], shared: list[str], **more: Any):
    everyone = dedicated + shared
    return memory_settings(
        name,
        dedicated,
        tmp_path,
        shared_tenants=shared,
        tenant_secrets={t: SECRETS[t].decode() for t in shared},
        storage={"tenant_file_roots": {t: [str(tmp_path / t)] for t in everyone}},
        **more,
    )


def _provision(broker: MemoryBroker, tenants: list[str]) -> None:
    for tenant in tenants:
        for kind in ("arrivals", "verdicts", "dlq"):
            broker.create_topic(kafka_topic(kind, tenant))
    broker.create_topic(SHARED_ARRIVALS_TOPIC, 2)
    broker.create_topic(kafka_topic("dlq", SHARED))


def _publish_shared(uploads: Uploads, tenant: str, content_id: str, *, sign_as: str | None = None) -> str:
    uri, data = uploads.clip(tenant, f"{content_id}.wav")
    key = f"{tenant}:{content_id}"
    value = arrival_for_uri(tenant, uri, key=key, content_id=content_id)
    signer = sign_as or tenant
    uploads.broker.produce(
        SHARED_ARRIVALS_TOPIC, value, key=key.encode(), headers=shared_headers(tenant, SECRETS[signer], value)
    )
    return key


def _verdict_keys(broker: MemoryBroker, tenant: str) -> list[str]:
    return [json.loads(value)["idempotency_key"] for _, value, _ in records(broker, "verdicts", tenant)]


def _reasons(broker: MemoryBroker, tenant: str) -> list[str]:
    return [
        dead_letter_from_record(value, headers)[0].reason
        for _, value, headers in records(broker, "dlq", tenant)
    ]


def test_shared_records_reach_their_tenants_topics_and_bad_ones_the_shared_dlq(broker, tmp_path):
    name, memory = broker
    _provision(memory, ["acme", "tiny"])
    worker = build_memory_worker(
        _settings(name, tmp_path, dedicated=[], shared=["acme", "tiny"]), memory, ConstantDetector()
    )
    uploads = Uploads(memory, tmp_path)
    good = [_publish_shared(uploads, "acme", f"a{i}") for i in range(3)]
    good += [_publish_shared(uploads, "tiny", f"t{i}") for i in range(2)]
    _publish_shared(uploads, "acme", "forged", sign_as="tiny")  # tiny's key, acme's name
    memory.produce(SHARED_ARRIVALS_TOPIC, _arrival("acme", "unsigned"))
    memory.produce(SHARED_ARRIVALS_TOPIC, b"not json at all")
    try:
        drive_worker(
            worker,
            lambda: (
                len(_verdict_keys(memory, "acme")) + len(_verdict_keys(memory, "tiny")) == 5
                and len(_reasons(memory, SHARED)) == 3
            ),
        )
    finally:
        worker.shutdown()
    assert sorted(_verdict_keys(memory, "acme")) == sorted(k for k in good if k.startswith("acme"))
    assert sorted(_verdict_keys(memory, "tiny")) == sorted(k for k in good if k.startswith("tiny"))
    assert sorted(_reasons(memory, SHARED)) == ["tenant_signature", "tenant_unsigned", "tenant_unsigned"]
    assert _reasons(memory, "acme") == _reasons(memory, "tiny") == []


def test_a_valid_shared_records_dead_letter_goes_to_its_tenants_dlq(broker, tmp_path):
    name, memory = broker
    _provision(memory, ["acme"])
    worker = build_memory_worker(
        _settings(name, tmp_path, dedicated=[], shared=["acme"]), memory, ConstantDetector()
    )
    # signed and proven, but its audio is not there: acme's own dlq
    value = arrival_for_uri("acme", f"file://{tmp_path}/acme/missing.wav", key="acme:m", content_id="m")
    memory.produce(SHARED_ARRIVALS_TOPIC, value, headers=shared_headers("acme", SECRETS["acme"], value))
    try:
        drive_worker(worker, lambda: bool(_reasons(memory, "acme")))
    finally:
        worker.shutdown()
    assert _reasons(memory, SHARED) == []


def test_pausing_one_shared_tenant_holds_only_its_records(broker, tmp_path):
    _, memory = broker
    _provision(memory, ["acme", "tiny"])
    memory.create_topic(SHARED_ARRIVALS_TOPIC)
    source = MemorySource(memory, [], shared=SHARED_TOPIC, group="g")
    for i in range(4):
        for tenant in ("acme", "tiny"):
            value = _arrival(tenant, f"{tenant}-{i}")
            memory.produce(
                SHARED_ARRIVALS_TOPIC,
                value,
                partition=0,
                headers=shared_headers(tenant, SECRETS[tenant], value),
            )
    source.pause(["acme"])
    first = source.poll(100, 0.1)
    assert [m.tenant for m in first] == ["tiny"] * 4  # tiny is not held behind acme
    source.ack([m.token for m in first])
    # acme's first record (offset 0) is held: nothing past it is committed
    assert memory.committed("g").get((SHARED_ARRIVALS_TOPIC, 0), 0) == 0
    source.resume(["acme"])
    second = source.poll(100, 0.1)
    assert [m.tenant for m in second] == ["acme"] * 4
    assert [json.loads(m.value)["idempotency_key"] for m in second] == [f"acme-{i}" for i in range(4)]
    source.ack([m.token for m in second])
    assert memory.committed("g")[(SHARED_ARRIVALS_TOPIC, 0)] == 8
    source.close(1.0)


def test_the_hold_is_bounded_then_the_shared_topic_waits(broker, tmp_path):
    _, memory = broker
    memory.create_topic(SHARED_ARRIVALS_TOPIC)
    source = MemorySource(memory, [], shared=SHARED_TOPIC, group="g", max_held=3)
    for i in range(6):
        value = _arrival("acme", f"a{i}")
        memory.produce(SHARED_ARRIVALS_TOPIC, value, headers=shared_headers("acme", SECRETS["acme"], value))
    value = _arrival("tiny", "t0")
    memory.produce(SHARED_ARRIVALS_TOPIC, value, headers=shared_headers("tiny", SECRETS["tiny"], value))
    source.pause(["acme"])
    # three of acme's are held, then the shared partition is not read: tiny waits (the trade-off)
    assert source.poll(100, 0.05) == []
    source.resume(["acme"])
    got: list[str] = []
    while len(got) < 7:
        batch = source.poll(100, 0.05)
        got += [m.tenant for m in batch]
        source.ack([m.token for m in batch])
    assert got == ["acme"] * 6 + ["tiny"]
    source.close(1.0)


def test_moving_a_tenant_between_dedicated_and_shared_rescored_nothing(broker, tmp_path):
    name, memory = broker
    _provision(memory, ["acme"])
    store = {"url": f"sqlite:///{tmp_path / 'verdicts.db'}"}
    detector = ConstantDetector()
    uploads = Uploads(memory, tmp_path)
    # 1. acme on its dedicated topic
    dedicated = build_memory_worker(
        _settings(name, tmp_path, dedicated=["acme"], shared=[], store=store), memory, detector
    )
    keys = [uploads.arrival("acme", f"c{i}") for i in range(3)]
    try:
        drive_worker(dedicated, lambda: len(_verdict_keys(memory, "acme")) == 3)
    finally:
        dedicated.shutdown()
    scored = detector.windows_scored
    # 2. acme moved to the shared topic; its producer publishes the same uploads again there
    # (the overlap a move can have) plus a new one
    shared = build_memory_worker(
        _settings(name, tmp_path, dedicated=[], shared=["acme"], store=store), memory, detector
    )
    for i in range(3):
        _publish_shared(uploads, "acme", f"c{i}")
    new = _publish_shared(uploads, "acme", "c3")
    try:
        drive_worker(shared, lambda: len(_verdict_keys(memory, "acme")) == 7)
    finally:
        shared.shutdown()
    # the repeats were answered from the store: only the new upload was scored
    assert detector.windows_scored - scored == scored // 3
    assert sorted(set(_verdict_keys(memory, "acme"))) == sorted([*keys, new])
    assert _reasons(memory, "acme") == _reasons(memory, SHARED) == []


def test_a_flood_of_forged_records_does_not_open_the_dead_letter_breaker(broker, tmp_path):
    name, memory = broker
    _provision(memory, ["acme"])
    settings = _settings(name, tmp_path, dedicated=[], shared=["acme"], dlq={"max_consecutive": 2})
    breaker = DlqBreaker(settings.dlq, min_outcomes=1)
    worker = build_memory_worker(settings, memory, ConstantDetector(), breaker=breaker)
    for i in range(6):
        memory.produce(SHARED_ARRIVALS_TOPIC, _arrival("acme", f"forged-{i}"))
    uploads = Uploads(memory, tmp_path)
    good = _publish_shared(uploads, "acme", "after")
    try:
        drive_worker(
            worker, lambda: len(_reasons(memory, SHARED)) == 6 and bool(_verdict_keys(memory, "acme"))
        )
    finally:
        worker.shutdown()
    assert _verdict_keys(memory, "acme") == [good]


def test_publish_shared_signs_what_the_worker_accepts(broker, tmp_path, monkeypatch):
    from services.cli import main

    name, memory = broker
    _provision(memory, ["acme"])
    (tmp_path / "acme").mkdir()
    clip = tmp_path / "clip.wav"
    Uploads(memory, tmp_path).clip("acme", "x.wav")
    clip.write_bytes((tmp_path / "acme" / "x.wav").read_bytes())
    monkeypatch.setenv("AUDIOGUARD_TRANSPORT", "memory")
    monkeypatch.setenv("AUDIOGUARD_MEMORY__BROKER", name)
    monkeypatch.setenv("AUDIOGUARD_SHARED_TENANTS", '["acme"]')
    monkeypatch.setenv("AUDIOGUARD_TENANT_SECRETS", '{"acme": "acme-secret"}')
    monkeypatch.setenv(
        "AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS", json.dumps({"acme": [str(tmp_path / "acme")]})
    )
    monkeypatch.delenv("AUDIOGUARD_CONFIG", raising=False)
    assert main(["publish", "--tenant", "acme", "--shared", str(clip)]) == 0
    ((_key, value, headers),) = read_memory_topic(memory, SHARED_ARRIVALS_TOPIC)
    assert SHARED_TOPIC.resolve(headers, value) == ("acme", None)
    # not a shared-topic transport
    assert main(["publish", "--transport", "pubsub", "--tenant", "acme", "--shared", str(clip)]) == 2
