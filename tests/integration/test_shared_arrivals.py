"""The shared arrivals topic on the real broker: two tenants on `audioguard.arrivals._shared`
next to a dedicated one; signed records get verdicts on their tenant's own topic, forged and
unsigned ones end in `audioguard.dlq._shared` with their reason, and the worker keeps going.
(The noisy-neighbour numbers on the shared topic: tests/e2e/test_shared_noisy_neighbour.py.)"""

from __future__ import annotations

from consumers.tenancy import SHARED, SHARED_ARRIVALS_TOPIC
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, create_topics, read_topic, tenant_topics
from dlq.envelope import dead_letter_from_record
from services.platform import arrival_for, shared_headers
from services.settings import DlqSettings, StorageSettings
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
