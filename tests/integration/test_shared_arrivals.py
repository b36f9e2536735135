"""The shared arrivals topic on the real broker: two tenants on `audioguard.arrivals._shared`
next to a dedicated one; signed records get verdicts on their tenant's own topic, forged and
unsigned ones end in `audioguard.dlq._shared` with their reason, and the worker keeps going;
a paused shared tenant spills to its overflow topic and comes back from it.
(The noisy-neighbour numbers on the shared topic: tests/e2e/test_shared_noisy_neighbour.py.)"""

from __future__ import annotations

import json
import time

from consumers.tenancy import SHARED, SHARED_ARRIVALS_TOPIC, overflow_topic, shared_topic
from consumers.transport import Message, OutRecord
from consumers.transports.kafka import (
    KafkaSink,
    KafkaSource,
    committed_offsets,
    create_topics,
    end_offsets,
    read_topic,
    tenant_topics,
)
from dlq.envelope import dead_letter_from_record
from services.platform import arrival_for, arrival_for_uri, shared_headers
from services.settings import DlqSettings, KafkaSettings, StorageSettings
from tests.support.audio import encode, speechlike
from tests.support.pipeline import RunningWorker, make_settings, publish_clips, publish_raw, verdicts_by_key


def test_signed_shared_records_reach_their_tenant_and_forged_ones_the_shared_dlq(
    broker, detector, tenants, audio_root
):
    dedicated, acme, tiny = tenants
    secrets = {acme: f"secret-{acme}", tiny: f"secret-{tiny}"}
    settings = make_settings(
        broker.bootstrap_servers,
        [dedicated],
        audio_root,
        shared_tenants=[acme, tiny],
        tenant_secrets=secrets,
        storage=StorageSettings(tenant_file_roots={t: [audio_root / t] for t in tenants}),
        dlq=DlqSettings(max_invalid_ratio=1.0, max_consecutive=10_000),
    )
    create_topics(
        settings.kafka, tenant_topics([dedicated]) + tenant_topics([acme, tiny], ("verdicts", "dlq"))
    )
    create_topics(settings.kafka, [SHARED_ARRIVALS_TOPIC, f"audioguard.dlq.{SHARED}"], partitions=2)

    def signed(tenant: str, name: str, *, key_of: str | None = None) -> tuple[str, OutRecord]:
        data = encode(speechlike(1.0, seed=len(name)))
        path = audio_root / tenant / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        key = f"{tenant}:{name}"
        value = arrival_for(tenant, f"file://{path}", data, key=key, content_id=name)
        headers = shared_headers(tenant, secrets[key_of or tenant].encode(), value)
        return key, OutRecord(SHARED, "arrivals", key.encode(), value, headers=tuple(headers))

    good = [signed(acme, f"a{i}") for i in range(3)] + [signed(tiny, f"t{i}") for i in range(2)]
    forged_key, forged = signed(acme, "forged", key_of=tiny)
    unsigned_key = f"{acme}:unsigned"
    unsigned = OutRecord(SHARED, "arrivals", unsigned_key.encode(), good[0][1].value)
    publish_raw(KafkaSink(settings.kafka), [r for _, r in good] + [forged, unsigned])
    own = publish_clips(settings, dedicated, audio_root, 2, seconds=1.0)

    with RunningWorker(settings, detector) as running:
        stats = running.worker.pipeline.stats
        assert running.wait_for(lambda: stats.acked >= len(good) + 2 + len(own), timeout=120), stats

    assert sorted(verdicts_by_key(settings, acme)) == sorted(k for k, _ in good if k.startswith(acme))
    assert sorted(verdicts_by_key(settings, tiny)) == sorted(k for k, _ in good if k.startswith(tiny))
    assert sorted(verdicts_by_key(settings, dedicated)) == sorted(own)
    reasons = {}
    for key, value, headers in read_topic(settings.kafka, f"audioguard.dlq.{SHARED}", idle=1.0, timeout=30):
        if key is not None and key.decode() in (forged_key, unsigned_key):
            reasons[key.decode()] = dead_letter_from_record(value, headers)[0].reason
    assert reasons == {forged_key: "tenant_signature", unsigned_key: "tenant_unsigned"}


def test_a_paused_shared_tenant_spills_to_its_overflow_topic_on_the_real_broker(broker, tenants, audio_root):
    """One shared partition; acme paused with a hold of 3: its records are copied to
    `audioguard.overflow.<acme>` (created by the spill), tiny is served meanwhile, the shared
    offset is committed past acme's records once their copies are acknowledged, and acme's
    records come back, in order and verified again, from the overflow topic on resume, whose
    offsets are committed for `<group>.overflow`."""
    dedicated, acme, tiny = tenants
    secrets = {acme: f"secret-{acme}", tiny: f"secret-{tiny}"}
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers, group_id=f"g-{acme}", metadata_refresh_ms=1000
    )
    settings = make_settings(
        broker.bootstrap_servers, [dedicated], audio_root, shared_tenants=[acme, tiny], tenant_secrets=secrets
    )
    create_topics(kafka, tenant_topics([dedicated]))
    # one partition, unless the other test of this module (same broker) created it first with two
    create_topics(kafka, [SHARED_ARRIVALS_TOPIC], partitions=1)

    def signed(tenant: str, key: str) -> OutRecord:
        value = arrival_for_uri(tenant, f"file:///{key}.wav", key=key, content_id=key.split(":")[1])
        headers = shared_headers(tenant, secrets[tenant].encode(), value)
        return OutRecord(SHARED, "arrivals", key.encode(), value, headers=tuple(headers))

    flood = [f"{acme}:a{i}" for i in range(40)]
    publish_raw(KafkaSink(kafka), [signed(acme, k) for k in flood] + [signed(tiny, f"{tiny}:t0")])
    ends = end_offsets(kafka, [SHARED_ARRIVALS_TOPIC])

    def committed_past_all() -> bool:
        done = committed_offsets(kafka, [SHARED_ARRIVALS_TOPIC])
        return all(done.get(key, -1) >= end for key, end in ends.items())

    overflow = overflow_topic(acme)
    source = KafkaSource(
        kafka,
        [dedicated],
        shared=shared_topic(settings.shared_tenants, settings.tenant_secrets),
        max_held=10,
        spill_after=3,
    )
    try:
        source.pause([acme])
        seen: list[Message] = []

        def turn() -> None:
            batch = source.poll(100, 0.2)
            source.ack([m.token for m in batch])  # other tests' shared records are acked too
            seen.extend(m for m in batch if m.tenant in (acme, tiny))

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            source.spilled().get(acme, 0) < len(flood) or not any(m.tenant == tiny for m in seen)
        ):
            turn()
        assert [m.tenant for m in seen] == [tiny]  # served beside the paused flood, not behind it
        assert source.spilled() == {acme: len(flood)}
        while time.monotonic() < deadline and not committed_past_all():
            turn()
        assert committed_past_all()
        copies = list(read_topic(kafka, overflow, idle=1.0, timeout=30))
        assert sorted(key.decode() for key, _, _ in copies if key) == sorted(flood)
        assert all(dict(h)["ag-tenant"] == acme.encode() for _, _, h in copies)
        # the overflow partition follows the shared one (assigned at the spill, no rebalance)
        # and stays paused with acme
        assert {(overflow, p) for _, p in ends} <= source.assigned()
        for _ in range(5):
            turn()
        assert [m.tenant for m in seen] == [tiny]
        source.resume([acme])
        while time.monotonic() < deadline and len(seen) < 1 + len(flood):
            turn()
        back = [m for m in seen if m.tenant == acme]
        assert {m.topic for m in back} == {overflow}
        got = [json.loads(m.value)["idempotency_key"] for m in back]
        assert sorted(got) == sorted(flood)
        # in order within each overflow partition (a copy keeps its shared partition's number)
        for partition in {m.coordinates["partition"] for m in back}:
            mine = [k for m, k in zip(back, got, strict=True) if m.coordinates["partition"] == partition]
            assert mine == [k for k in flood if k in mine]
        assert all(m.rejection is None for m in back)
    finally:
        source.close(5.0)
    # the overflow partition commits for the group's overflow reader, past every copy
    overflow_done = committed_offsets(kafka, [overflow], f"{kafka.group_id}.overflow")
    assert sum(overflow_done.values()) == len(flood)
