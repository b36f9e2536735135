"""Spilling a paused shared tenant to its overflow topic, on the memory transport.

A tenant paused on the shared arrivals topic whose hold is full has its shared records
copied to `audioguard.overflow.<tenant>` (consumers.overflow), so the shared partition keeps
flowing for everyone else. These tests check: the copy keeps payload and signed headers
and is verified again when read back; the overflow topic is paused with its tenant; no
shared offset is committed before its copy is acknowledged (a failed copy is spilled
again); and a crash between the acknowledged copy and the commit spills twice but scores
once (the second copy is answered from the verdict store).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consumers.tenancy import (
    KAFKA_ARRIVALS_PATTERN,
    SHARED,
    SHARED_ARRIVALS_TOPIC,
    SharedTopic,
    kafka_topic,
    overflow_topic,
    tenant_of_kafka_topic,
    tenant_of_record,
)
from consumers.transports.memory import MemoryBroker, MemorySource, read_memory_topic
from services.platform import arrival_for_uri, shared_headers
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
OVERFLOW = overflow_topic("acme")


def _signed(memory: MemoryBroker, tenant: str, key: str, *, topic: str = SHARED_ARRIVALS_TOPIC) -> None:
    value = arrival_for_uri(tenant, "file:///x.wav", key=key, content_id=key)
    memory.produce(topic, value, key=key.encode(), headers=shared_headers(tenant, SECRETS[tenant], value))


def _keys(messages: Any) -> list[str]:
    return [json.loads(m.value)["idempotency_key"] for m in messages]


def _shared_committed(memory: MemoryBroker, group: str = "g") -> int:
    return memory.committed(group).get((SHARED_ARRIVALS_TOPIC, 0), 0)


def _drain(source: MemorySource, want: int, polls: int = 50) -> list[Any]:
    got: list[Any] = []
    for _ in range(polls):
        batch = source.poll(100, 0.01)
        source.ack([m.token for m in batch])
        got += batch
        if len(got) >= want:
            break
    return got


def _acme_paused(memory: MemoryBroker, floods: int, **options: Any) -> MemorySource:
    """A source on the shared topic with acme paused and `floods` of acme's records waiting."""
    memory.create_topic(SHARED_ARRIVALS_TOPIC)
    source = MemorySource(memory, [], shared=SHARED_TOPIC, group="g", **options)
    source.pause(["acme"])
    for i in range(floods):
        _signed(memory, "acme", f"a{i}")
    return source


def test_the_overflow_topic_is_not_an_arrivals_topic_and_proves_nothing_by_itself():
    import re

    assert OVERFLOW == "audioguard.overflow.acme"
    assert not re.match(KAFKA_ARRIVALS_PATTERN, OVERFLOW)
    assert tenant_of_kafka_topic(OVERFLOW) == "acme"  # so pausing acme pauses it
    value = arrival_for_uri("acme", "file:///x.wav", key="k", content_id="k")
    assert tenant_of_record(
        OVERFLOW, shared_headers("acme", SECRETS["acme"], value), value, SHARED_TOPIC
    ) == (
        "acme",
        None,
    )
    # unsigned on the overflow topic: refused like on the shared one
    tenant, rejection = tenant_of_record(OVERFLOW, [], value, SHARED_TOPIC)
    assert tenant == SHARED and rejection is not None and rejection[0] == "tenant_unsigned"
    # validly signed by tiny, but written to acme's overflow topic
    tiny = arrival_for_uri("tiny", "file:///x.wav", key="k", content_id="k")
    tenant, rejection = tenant_of_record(
        OVERFLOW, shared_headers("tiny", SECRETS["tiny"], tiny), tiny, SHARED_TOPIC
    )
    assert tenant == SHARED and rejection is not None and rejection[0] == "tenant_overflow_mismatch"


def test_a_full_hold_spills_and_the_shared_partition_keeps_flowing():
    with registered_broker() as (_, memory):
        # the old bound (max_held) would have stopped the shared partition at 10 held records
        source = _acme_paused(memory, 30, max_held=10, spill_after=3)
        _signed(memory, "tiny", "t0")
        served = _drain(source, 1)
        assert [m.tenant for m in served] == ["tiny"]  # not behind acme's 30
        _drain(source, 0, polls=2)  # the copies' delivery reports
        copies = list(read_memory_topic(memory, OVERFLOW))
        assert [json.loads(v)["idempotency_key"] for _, v, _ in copies] == [f"a{i}" for i in range(30)]
        originals = list(read_memory_topic(memory, SHARED_ARRIVALS_TOPIC))[:30]
        assert copies == originals  # key, payload and the signed headers, unchanged
        # every copy acknowledged: the shared partition is committed past all of them
        assert _shared_committed(memory) == 31
        assert source.spilled() == {"acme": 30}
        # paused acme: its overflow topic is not read either
        assert _drain(source, 0, polls=3) == []
        source.resume(["acme"])
        back = _drain(source, 30)
        assert [(m.tenant, m.topic) for m in back] == [("acme", OVERFLOW)] * 30
        assert _keys(back) == [f"a{i}" for i in range(30)]  # in order within the overflow log
        source.close(1.0)


def test_no_shared_offset_is_committed_before_its_copy_is_acknowledged():
    with registered_broker() as (_, memory):
        source = _acme_paused(memory, 4, spill_after=2)
        _signed(memory, "tiny", "t0")
        source.fail_spills = 2  # the broker refuses the first two copies
        first = source.poll(100, 0)
        source.ack([m.token for m in first])
        assert _keys(first) == ["t0"]
        # the copies are sent, not acknowledged: nothing past acme's first record is committed
        assert _shared_committed(memory) == 0
        source.poll(100, 0)  # two refused (spilled again), two acknowledged
        assert _shared_committed(memory) == 0  # a0 and a1 are not acknowledged yet
        assert [json.loads(v)["idempotency_key"] for _, v, _ in read_memory_topic(memory, OVERFLOW)] == [
            "a2",
            "a3",
        ]
        source.poll(100, 0)
        assert _shared_committed(memory) == 5
        keys = sorted(json.loads(v)["idempotency_key"] for _, v, _ in read_memory_topic(memory, OVERFLOW))
        assert keys == ["a0", "a1", "a2", "a3"]  # each once: nothing lost, no copy of a refused one
        source.close(1.0)


def test_a_crash_before_the_copies_are_acknowledged_loses_nothing():
    with registered_broker() as (_, memory):
        source = _acme_paused(memory, 3, spill_after=1)
        assert source.poll(100, 0) == []  # spilled, not acknowledged
        source.crash()
        assert OVERFLOW not in memory.topics() or not list(read_memory_topic(memory, OVERFLOW))
        again = MemorySource(memory, [], shared=SHARED_TOPIC, group="g")
        assert _keys(_drain(again, 3)) == ["a0", "a1", "a2"]  # read again from the shared topic
        again.close(1.0)


def _settings(name: str, tmp_path: Path, **more: Any):
    return memory_settings(
        name,
        [],
        tmp_path,
        shared_tenants=["acme"],
        tenant_secrets={"acme": SECRETS["acme"].decode()},
        storage={"tenant_file_roots": {"acme": [str(tmp_path / "acme")]}},
        store={"url": f"sqlite:///{tmp_path / 'verdicts.db'}"},
        # one in flight at a time: the second copy of an upload is parsed after the first is stored
        tenant_defaults={"max_in_flight": 1},
        **more,
    )


def test_a_crash_between_the_acknowledged_copy_and_the_commit_scores_each_upload_once(tmp_path):
    with registered_broker() as (name, memory):
        for kind in ("verdicts", "dlq"):
            memory.create_topic(kafka_topic(kind, "acme"))
        memory.create_topic(SHARED_ARRIVALS_TOPIC)
        memory.create_topic(kafka_topic("dlq", SHARED))
        uploads = Uploads(memory, tmp_path)
        keys = []
        for i in range(3):
            uri, _ = uploads.clip("acme", f"c{i}.wav")
            key = f"acme:c{i}"
            value = arrival_for_uri("acme", uri, key=key, content_id=f"c{i}")
            memory.produce(
                SHARED_ARRIVALS_TOPIC,
                value,
                key=key.encode(),
                headers=shared_headers("acme", SECRETS["acme"], value),
            )
            keys.append(key)
        group = _settings(name, tmp_path).memory.group_id
        spiller = MemorySource(memory, [], shared=SHARED_TOPIC, group=group, spill_after=1)
        spiller.pause(["acme"])
        spiller.poll(100, 0)
        # the process dies after the broker acknowledged the copies, before its commit went out
        spiller._commit = lambda only=None: None  # type: ignore[method-assign]
        spiller.poll(100, 0)
        spiller.crash()
        assert len(list(read_memory_topic(memory, OVERFLOW))) == 3
        assert _shared_committed(memory, group) == 0
        detector = ConstantDetector()
        worker = build_memory_worker(_settings(name, tmp_path), memory, detector)
        try:
            # each upload twice: once from the shared topic, once from the overflow topic
            drive_worker(worker, lambda: len(list(records(memory, "verdicts", "acme"))) == 6)
        finally:
            worker.shutdown()
        verdicts = [json.loads(v)["idempotency_key"] for _, v, _ in records(memory, "verdicts", "acme")]
        assert sorted(set(verdicts)) == keys
        # scored once per upload (one 1 s window each): the second copy was answered from the store
        assert detector.windows_scored == 3
        assert list(records(memory, "dlq", "acme")) == list(records(memory, "dlq", SHARED)) == []
