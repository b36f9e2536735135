"""Tenancy on the real broker: a new tenant's topic is picked up without a restart, a rate-
limited tenant is paused (never dropped), and every cross-tenant attempt (payload naming
another tenant, a file:// URI into another tenant's root, an s3:// URI into another tenant's
bucket on moto_server) ends in the dead-letter topic with no verdict anywhere."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from consumers.ports import NoHooks
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, create_topics, tenant_topics
from consumers.work import Work
from dlq.envelope import dead_letter_from_record
from services.local.broker import EmbeddedBroker
from services.local.emulators import MotoServer
from services.platform import arrival_for
from services.settings import DlqSettings, KafkaSettings, StorageSettings, TenantSettings
from services.tools.worker import build_worker
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


class Hooks(NoHooks):
    def __init__(self) -> None:
        self.finished: list[Work] = []

    def done(self, work: Work) -> None:
        self.finished.append(work)


def test_a_new_tenant_topic_is_consumed_without_a_restart(detector, tenants, audio_root, tmp_path):
    """Pattern subscription (no tenant list): a topic created while the worker runs is
    consumed after the next metadata refresh plus a rebalance. Its own broker: a pattern
    worker on the session broker would consume every other test's arrivals."""
    first, late = tenants[0], tenants[1]
    refresh_ms = 1000
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = make_settings(
            broker.bootstrap_servers,
            [first, late],
            audio_root,
            kafka=KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers,
                group_id=f"g-{first}",
                metadata_refresh_ms=refresh_ms,
            ),
        )
        # no tenant list: subscribe by pattern to every audioguard.arrivals.<tenant>
        settings = settings.model_copy(update={"tenants": []})
        create_topics(settings.kafka, tenant_topics([first]), partitions=1)
        publish_clips(settings, first, audio_root, 2, seconds=1.0)
        with RunningWorker(settings, detector) as running:
            stats = running.worker.pipeline.stats
            assert running.wait_for(lambda: stats.verdicts >= 2, timeout=90), stats
            created = time.monotonic()
            create_topics(settings.kafka, tenant_topics([late]), partitions=1)
            keys = publish_clips(settings, late, audio_root, 2, seed=50, seconds=1.0)
            assert running.wait_for(lambda: late in running.worker.tenants_seen, timeout=90), (
                "the new tenant's topic was never consumed"
            )
            picked_up = time.monotonic() - created
            assert running.wait_for(lambda: stats.verdicts >= 4, timeout=60), stats
        print(
            f"\nnew tenant topic consumed {picked_up:.1f} s after creation "
            f"(metadata_refresh_ms={refresh_ms}, plus a group rebalance)"
        )
        assert sorted(verdicts_by_key(settings, late)) == sorted(keys)


def test_a_rate_limited_tenant_is_paused_not_dropped(broker, detector, tenants, audio_root):
    tenant = tenants[0]
    rate, burst, count = 4.0, 2, 16
    settings = make_settings(
        broker.bootstrap_servers,
        [tenant],
        audio_root,
        tenant_overrides={tenant: TenantSettings(rate_per_second=rate, burst=burst)},
        # past two held refusals the tenant's partitions pause (the hold limit's hysteresis)
        max_held_events=2,
    )
    provision(settings, partitions=1)
    keys = publish_clips(settings, tenant, audio_root, count, seconds=0.5)
    hooks = Hooks()
    worker = build_worker(settings, detector=detector, hooks=hooks)
    # small polls, so the backlog is fetched in several rounds: paused, resumed, paused again
    worker.poll_batch = 4
    with RunningWorker(settings, detector, worker=worker) as running:
        assert running.wait_for(lambda: worker.pipeline.stats.acked >= count, timeout=120), (
            worker.pipeline.stats
        )
        load = worker.pipeline.admit.load(tenant)

    assert sorted(verdicts_by_key(settings, tenant)) == sorted(keys)  # nothing dropped
    assert load.rejections.get("tenant_rate", 0) >= 1
    assert worker.pauses.get(tenant, 0) >= 1 and worker.resumes.get(tenant, 0) >= 1
    admitted = sorted(w.admitted_at for w in hooks.finished)
    # the bucket is a ceiling: a slower machine only spreads admissions further apart
    span = admitted[-1] - admitted[0]
    assert span >= (count - burst) / rate * 0.9, span
    print(
        f"\n{count} events at rate {rate}/s burst {burst}: admitted over {span:.2f} s, "
        f"paused {worker.pauses[tenant]}x, refusals {load.rejections}"
    )


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def _record(tenant_topic: str, claimed: str, uri: str, data: bytes, key: str) -> OutRecord:
    value = arrival_for(claimed, uri, data, key=key, content_id=key.split(":")[-1])
    return OutRecord(tenant=tenant_topic, destination="arrivals", key=key.encode(), value=value)


def _store(root: Path, name: str, data: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_bytes(data)
    return path


def test_cross_tenant_attempts_are_dead_lettered_and_never_get_a_verdict(
    broker, detector, tenants, audio_root, tmp_path, aws_env
):
    mine, other = tenants[0], tenants[1]
    data = encode(speechlike(1.0, seed=7))
    with MotoServer(log_path=tmp_path / "moto.log") as moto:
        import boto3

        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
        for tenant in (mine, other):
            s3.create_bucket(Bucket=f"audio-{tenant}")
            s3.put_object(Bucket=f"audio-{tenant}", Key="clip.wav", Body=data)
        settings = make_settings(
            broker.bootstrap_servers,
            [mine, other],
            audio_root,
            storage=StorageSettings(
                tenant_file_roots={t: [audio_root / t] for t in (mine, other)},
                tenant_s3_locations={t: [f"audio-{t}"] for t in (mine, other)},
                s3_endpoint_url=moto.endpoint_url,
            ),
            dlq=DlqSettings(max_invalid_ratio=1.0, max_consecutive=10_000),
        )
        provision(settings, partitions=1)
        own_file = _store(audio_root / mine, "own.wav", data)
        theirs = _store(audio_root / other, "theirs.wav", data)
        attacks = {
            # the payload names the other tenant (with a URI in that tenant's root)
            f"{mine}:claims-other": ("tenant_mismatch", other, f"file://{theirs}"),
            # a file:// URI straight into the other tenant's root
            f"{mine}:file-other": ("uri_outside_roots", mine, f"file://{theirs}"),
            # ... and by walking out of its own root
            f"{mine}:file-walk": (None, mine, f"file://{audio_root / mine}/../{other}/theirs.wav"),
            # an s3:// URI into the other tenant's bucket
            f"{mine}:s3-other": ("uri_outside_roots", mine, f"s3://audio-{other}/clip.wav"),
        }
        healthy = {
            f"{mine}:own-file": f"file://{own_file}",
            f"{mine}:own-s3": f"s3://audio-{mine}/clip.wav",
        }
        records = [_record(mine, claimed, uri, data, key) for key, (_r, claimed, uri) in attacks.items()]
        records += [_record(mine, mine, uri, data, key) for key, uri in healthy.items()]
        publish_raw(KafkaSink(settings.kafka), records)

        with RunningWorker(settings, detector) as running:
            stats = running.worker.pipeline.stats
            assert running.wait_for(lambda: stats.acked >= len(records), timeout=120), stats

    assert sorted(verdicts_by_key(settings, mine)) == sorted(healthy)
    assert verdicts_by_key(settings, other) == {}
    assert read_destination(settings, other, "dlq", idle=0.5) == []
    reasons: dict[str, str] = {}
    for key, value, headers in read_destination(settings, mine, "dlq"):
        envelope, _payload = dead_letter_from_record(value, headers)
        assert envelope.category == "poison"
        reasons[(key or b"").decode()] = envelope.reason
    assert sorted(reasons) == sorted(attacks)
    for key, (reason, _claimed, _uri) in attacks.items():
        if reason is not None:
            assert reasons[key] == reason, (key, reasons[key])
        else:
            assert reasons[key] in ("path_traversal", "uri_outside_roots"), (key, reasons[key])
    print("\ncross-tenant attempts -> dead letters:", reasons)
