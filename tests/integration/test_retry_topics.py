"""Kafka retry tiers on the real broker: a transient failure moves to `audioguard.retry.<tier>.<tenant>`,
is not processed before it is due, recovers when the cause goes away, and after the last tier
lands in the DLQ as retries_exhausted with the original coordinates."""

from __future__ import annotations

import json
import time

import pytest

from consumers.retry_topics import (
    ATTEMPT_HEADER,
    DUE_HEADER,
    FIRST_SEEN_HEADER,
    ORIGIN_HEADER,
    TIER_HEADER,
    RetryPolicy,
    original_message,
    retry_record,
)
from consumers.tenancy import kafka_topic
from consumers.transport import Message, OutRecord
from consumers.transports.kafka import KafkaSink, read_topic
from dlq.envelope import dead_letter_from_record
from services.local.emulators import MotoServer, free_port
from services.platform import arrival_for
from services.settings import RetrySettings, StorageSettings
from tests.support.audio import encode, speechlike
from tests.support.pipeline import (
    RunningWorker,
    make_settings,
    provision,
    publish_clips,
    publish_raw,
    read_destination,
    verdicts_by_key,
)


def _message(topic: str, headers: tuple[tuple[str, bytes], ...] = ()) -> Message:
    return Message(
        token=(topic, 0, 7),
        tenant="acme",
        topic=topic,
        value=b'{"x": 1}',
        key=b"k",
        headers=headers,
        coordinates={"partition": 0, "offset": 7, "timestamp_ms": 1_700_000_000_000},
        received_at=1000.0,
    )


def test_retry_record_walks_the_tiers_then_gives_up() -> None:
    policy = RetryPolicy((10.0, 60.0))
    first = retry_record(
        _message("audioguard.arrivals.acme"), "storage_unavailable", policy, now=lambda: 2000.0
    )
    assert first is not None and first.destination == "retry" and first.tier == 0
    assert first.value == b'{"x": 1}' and first.key == b"k"
    headers = dict(first.headers)
    assert headers[ATTEMPT_HEADER] == b"2" and headers[TIER_HEADER] == b"0"
    assert float(headers[DUE_HEADER]) == 2010.0 and float(headers[FIRST_SEEN_HEADER]) == 1000.0
    assert json.loads(headers[ORIGIN_HEADER]) == {
        "topic": "audioguard.arrivals.acme",
        "partition": 0,
        "offset": 7,
        "timestamp_ms": 1_700_000_000_000,
    }
    second_in = _message("audioguard.retry.0.acme", first.headers)
    second = retry_record(second_in, "storage_unavailable", policy, now=lambda: 2011.0)
    assert second is not None and second.tier == 1
    assert dict(second.headers)[ATTEMPT_HEADER] == b"3" and float(dict(second.headers)[DUE_HEADER]) == 2071.0
    assert dict(second.headers)[ORIGIN_HEADER] == headers[ORIGIN_HEADER]  # the original, not tier 0
    last_in = _message("audioguard.retry.1.acme", second.headers)
    assert retry_record(last_in, "storage_unavailable", policy) is None
    original = original_message(last_in)
    assert original.topic == "audioguard.arrivals.acme" and original.received_at == 1000.0
    assert original.coordinates["offset"] == 7 and not any(
        k.startswith("ag-retry-") for k, _ in original.headers
    )


def _s3_arrival(tenant: str, key: str, data: bytes) -> OutRecord:
    value = arrival_for(tenant, f"s3://audio/{key}.wav", data, key=f"{tenant}:{key}", content_id=key)
    return OutRecord(tenant=tenant, destination="arrivals", key=f"{tenant}:{key}".encode(), value=value)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def _retry_settings(broker, tenants, audio_root, port: int, tiers: list[float]):  # type: ignore[no-untyped-def]
    return make_settings(
        broker.bootstrap_servers,
        tenants,
        audio_root,
        storage=StorageSettings(
            tenant_file_roots={t: [audio_root / t] for t in tenants},
            tenant_s3_locations={t: ["audio"] for t in tenants},
            s3_endpoint_url=f"http://127.0.0.1:{port}",
            timeout_seconds=1.0,
        ),
        retry=RetrySettings(
            attempts=2, initial_backoff_seconds=0.05, max_total_seconds=1.0, tier_delays_seconds=tiers
        ),
    )


def test_storage_outage_goes_through_the_tiers_to_the_dlq_never_early(
    broker, detector, tenants, audio_root, aws_env
):
    tenant = tenants[0]
    settings = _retry_settings(broker, [tenant], audio_root, free_port(), [2.0, 3.0])  # nothing listens
    provision(settings)
    publish_raw(KafkaSink(settings.kafka), [_s3_arrival(tenant, "down", encode(speechlike(1.0)))])
    healthy = publish_clips(settings, tenant, audio_root, 3, seed=5, seconds=1.0)

    with RunningWorker(settings, detector) as running:
        source = running.worker.pipeline.source
        assert running.wait_for(lambda: running.worker.pipeline.stats.dead_letters >= 1, timeout=90)
        stats = running.worker.pipeline.stats
        assert stats.verdicts == len(healthy)  # healthy arrivals were not held up by the retries
        assert stats.retried == 2 and stats.dead_letters == 1
        # paused until due, not re-read in a loop: one hold per tier, at most a couple more
        assert 1 <= source.retry_holds <= 4, source.retry_holds  # type: ignore[attr-defined]

    records = {}
    for tier in (0, 1):
        got = list(read_topic(settings.kafka, kafka_topic("retry", tenant, tier), idle=1.0))
        assert len(got) == 1, (tier, got)
        records[tier] = dict(got[0][2])
    assert records[0][ATTEMPT_HEADER] == b"2" and records[1][ATTEMPT_HEADER] == b"3"
    # tier 1 was written when tier 0's record was processed: not before tier 0 was due
    written_1 = float(records[1][DUE_HEADER]) - 3.0
    assert written_1 >= float(records[0][DUE_HEADER]) - 0.01

    dlq = read_destination(settings, tenant, "dlq")
    assert len(dlq) == 1
    envelope, payload = dead_letter_from_record(dlq[0][1], dlq[0][2])
    assert envelope.category == "retries_exhausted" and envelope.reason == "storage_unavailable"
    assert envelope.attempt == 3
    assert envelope.source.topic == kafka_topic("arrivals", tenant) and envelope.source.offset == 0
    assert envelope.last_failed_at.timestamp() >= float(records[1][DUE_HEADER]) - 0.01
    assert envelope.first_seen_at.timestamp() == pytest.approx(float(records[0][FIRST_SEEN_HEADER]), abs=0.01)
    assert json.loads(payload)["idempotency_key"] == f"{tenant}:down"  # the payload, unchanged
    assert set(verdicts_by_key(settings, tenant)) == set(healthy)


def test_a_transient_outage_recovers_from_the_retry_tier(
    broker, detector, tenants, audio_root, aws_env, tmp_path
):
    tenant = tenants[0]
    port = free_port()
    settings = _retry_settings(broker, [tenant], audio_root, port, [4.0, 30.0])
    provision(settings)
    data = encode(speechlike(1.0, seed=3))
    publish_raw(KafkaSink(settings.kafka), [_s3_arrival(tenant, "later", data)])

    with RunningWorker(settings, detector) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.retried >= 1, timeout=60)
        failed_at = time.time()
        with MotoServer(port=port, log_path=tmp_path / "moto.log") as moto:
            import boto3

            s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
            s3.create_bucket(Bucket="audio")
            s3.put_object(Bucket="audio", Key="later.wav", Body=data)
            assert running.wait_for(lambda: running.worker.pipeline.stats.verdicts >= 1, timeout=60)
            verdict_at = time.time()

    verdicts = verdicts_by_key(settings, tenant)
    assert list(verdicts) == [f"{tenant}:later"]
    assert verdicts[f"{tenant}:later"][0]["attempt"] == 2
    assert verdict_at - failed_at >= 3.0  # waited for the tier's delay
    assert read_destination(settings, tenant, "dlq", idle=0.5) == []


def test_a_verdict_store_outage_is_retried_then_recovers_from_the_tier(
    broker, detector, tenants, audio_root, tmp_path
):
    """The verdict store (Redis) is down when the arrival comes: in-place retries, then retry
    tier 0; the store comes back and the arrival gets its verdict (attempt 2), stored there."""
    import subprocess

    import redis

    tenant = tenants[0]
    port = free_port()
    settings = make_settings(
        broker.bootstrap_servers,
        [tenant],
        audio_root,
        store_url=f"redis://127.0.0.1:{port}/0",
        retry=RetrySettings(
            attempts=2, initial_backoff_seconds=0.05, max_total_seconds=0.5, tier_delays_seconds=[4.0, 30.0]
        ),
    )
    provision(settings)
    keys = publish_clips(settings, tenant, audio_root, 1, seconds=1.0)

    with RunningWorker(settings, detector) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.retried >= 1, timeout=60)
        assert running.worker.pipeline.stats.verdicts == 0
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert running.wait_for(lambda: running.worker.pipeline.stats.verdicts >= 1, timeout=60)
            # verdicts only: the crash-loop quarantine's attempt counters share the store
            stored = [k for k in redis.Redis(port=port).keys("*") if b":attempts:" not in k]
        finally:
            server.terminate()
            server.wait(10)

    verdicts = verdicts_by_key(settings, tenant)
    assert list(verdicts) == keys and verdicts[keys[0]][0]["attempt"] == 2
    assert len(stored) == 1 and keys[0].encode() in stored[0]
    assert read_destination(settings, tenant, "dlq", idle=0.5) == []
