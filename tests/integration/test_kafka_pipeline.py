"""The spine end to end on the real embedded broker: arrivals in, verdicts out, commits after."""

from __future__ import annotations

import json

import jsonschema
import pytest

from consumers.tenancy import kafka_topic
from consumers.transports.kafka import committed_offsets
from schemas import SCHEMA_DIR
from tests.support.pipeline import (
    RunningWorker,
    make_settings,
    provision,
    publish_clips,
    read_destination,
    verdicts_by_key,
)

VERDICT_SCHEMA = json.loads((SCHEMA_DIR / "verdict.schema.json").read_text())


def test_arrivals_over_three_tenants_become_one_valid_verdict_each(broker, detector, tenants, audio_root):
    settings = make_settings(broker.bootstrap_servers, tenants, audio_root)
    provision(settings)
    per_tenant = {
        t: publish_clips(settings, t, audio_root, count=4 + i, seed=10 * i) for i, t in enumerate(tenants)
    }
    total = sum(len(k) for k in per_tenant.values())

    with RunningWorker(settings, detector) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.acked >= total, timeout=90), (
            running.worker.pipeline.stats
        )

    stats = running.worker.pipeline.stats
    assert (stats.verdicts, stats.dead_letters, stats.acked) == (total, 0, total)
    for tenant, keys in per_tenant.items():
        records = read_destination(settings, tenant)
        assert len(records) == len(keys)
        seen = set()
        for key, value, headers in records:
            verdict = json.loads(value)
            jsonschema.validate(verdict, VERDICT_SCHEMA)
            assert verdict["tenant_id"] == tenant
            assert key == verdict["idempotency_key"].encode()
            header = dict(headers)
            assert header["ag-idempotency-key"] == key
            assert header["ag-model-version"] == detector.meta.version.encode()
            assert header["ag-schema-version"].startswith(b"1.")
            seen.add(verdict["idempotency_key"])
        assert seen == set(keys)
        assert read_destination(settings, tenant, "dlq", idle=0.5) == []
    offsets = committed_offsets(settings.kafka, [kafka_topic("arrivals", t) for t in tenants])
    assert sum(o for o in offsets.values() if o >= 0) == total  # -1001: a partition never written


def test_worker_that_dies_before_committing_gets_the_same_verdicts_on_redelivery(
    broker, detector, tenants, audio_root, tmp_path
):
    store = f"sqlite:///{tmp_path / 'verdicts.db'}"
    settings = make_settings(broker.bootstrap_servers, tenants[:2], audio_root, store_url=store)
    provision(settings)
    keys = publish_clips(settings, tenants[0], audio_root, 5) + publish_clips(
        settings, tenants[1], audio_root, 3, 50
    )

    # First worker: scores, stores and publishes every verdict, but "dies" before any commit:
    # its acks never reach Kafka (the process is gone before the commit call).
    first = RunningWorker(settings, detector)
    source = first.worker.pipeline.source
    source.ack = lambda tokens: None  # type: ignore[method-assign]
    with first:
        assert first.wait_for(lambda: first.worker.pipeline.stats.acked >= len(keys), timeout=90)
    offsets = committed_offsets(settings.kafka, [kafka_topic("arrivals", t) for t in settings.tenants])
    assert all(o < 0 for o in offsets.values()), offsets  # nothing committed

    # Second worker, same group: Kafka re-delivers every event; the store answers them.
    with RunningWorker(settings, detector) as second:
        assert second.wait_for(lambda: second.worker.pipeline.stats.acked >= len(keys), timeout=90)
    assert second.worker.pipeline.stats.duplicates == len(keys)
    assert second.worker.pipeline.stats.batches == 0  # nothing scored twice

    for tenant in settings.tenants:
        for key, verdicts in verdicts_by_key(settings, tenant).items():
            assert len(verdicts) == 2, key  # at-least-once: published again ...
            assert verdicts[0] == verdicts[1], key  # ... and byte-for-byte the same verdict
    offsets = committed_offsets(settings.kafka, [kafka_topic("arrivals", t) for t in settings.tenants])
    assert sum(o for o in offsets.values() if o >= 0) == len(keys)


@pytest.mark.parametrize("bad", ["not json", "{}", '{"schema_version": "9.0"}'])
def test_a_malformed_arrival_is_dead_lettered_and_the_rest_still_scored(
    broker, detector, tenants, audio_root, bad
):
    from consumers.transport import OutRecord
    from consumers.transports.kafka import KafkaSink
    from tests.support.pipeline import publish_raw

    settings = make_settings(broker.bootstrap_servers, tenants[:1], audio_root)
    provision(settings, partitions=1)
    tenant = tenants[0]
    keys = publish_clips(settings, tenant, audio_root, 2)
    publish_raw(
        KafkaSink(settings.kafka),
        [OutRecord(tenant=tenant, destination="arrivals", key=b"bad", value=bad.encode())],
    )
    with RunningWorker(settings, detector) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.acked >= 3, timeout=60)
    assert running.worker.pipeline.stats.verdicts == len(keys)
    dead = read_destination(settings, tenant, "dlq")
    assert len(dead) == 1
    _key, value, headers = dead[0]
    assert value == bad.encode()  # the original payload, unchanged
    reasons = {k: v for k, v in headers}
    assert any(k.endswith("reason") for k in reasons), reasons


def test_acks_are_committed_asynchronously_never_past_an_unfinished_offset(broker, tenants, audio_root):
    """KafkaSource.ack commits in the background (commit_interval_ms): the loop never waits
    for the broker, the committed offset catches up without further acks, it never passes an
    unfinished message, and close commits what the last asynchronous round had not."""
    import time

    from consumers.transports.kafka import KafkaSource

    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    settings.kafka.commit_interval_ms = 50
    provision(settings, partitions=1)
    publish_clips(settings, tenant, audio_root, count=6, seconds=0.5)
    topic = kafka_topic("arrivals", tenant)
    source = KafkaSource(settings.kafka, [tenant])
    closed = False
    try:
        messages: list = []
        deadline = time.monotonic() + 60
        while len(messages) < 6 and time.monotonic() < deadline:
            messages += source.poll(10, 0.2)
        assert [m.token[2] for m in messages] == list(range(6))
        source.ack([messages[i].token for i in (0, 1, 3, 4)])  # 2 is unfinished

        def committed() -> int:
            return committed_offsets(settings.kafka, [topic], group_id=settings.kafka.group_id)[(topic, 0)]

        deadline = time.monotonic() + 20
        while committed() != 2 and time.monotonic() < deadline:
            source.poll(10, 0.1)  # the asynchronous result arrives inside poll
        assert committed() == 2, "committed past the unfinished offset 2, or not at all"
        for _ in range(5):
            source.poll(10, 0.1)
        assert committed() == 2
        source.ack([messages[2].token])
        source.close(10)  # synchronous: 5 is still unfinished, so 0..4 are committed
        closed = True
        assert committed() == 5
    finally:
        if not closed:
            source.close(10)
