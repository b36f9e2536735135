"""A detection whose arrival the worker dead-lettered is `failed`, with the dead letter's
category and reason, once the reporting pipeline has stored that dead letter.

Real uvicorn and PostgreSQL; the arrival is the one the API published (in-process broker);
its dead letter is built by the worker's own envelope code and stored through the reporting
pipeline's own row builder and store, as `audioguard report run` would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from api.keys import ApiKeys
from consumers.tenancy import kafka_topic
from consumers.transports.memory import memory_broker, provision_memory, read_memory_topic
from reporting.records import verdict_row
from reporting.store import ReportingStore, migrate_store
from services.settings import ApiSettings, DatabaseSettings, MemorySettings, Settings, StorageSettings
from tests.support.api_server import RunningApi
from tests.support.reporting import store_dead_letter, verdict_bytes


def test_a_dead_lettered_arrival_is_failed_with_its_reason(
    postgres_url: str, tenants: list[str], tmp_path: Path
) -> None:
    tenant = tenants[0]
    settings = Settings(
        transport="memory",
        tenants=[tenant],
        memory=MemorySettings(broker=f"api-{uuid.uuid4().hex[:8]}"),
        storage=StorageSettings(tenant_file_roots={tenant: [tmp_path / tenant]}),
        database=DatabaseSettings(url=postgres_url),
        api=ApiSettings(key_cache_seconds=0),
    )
    provision_memory(settings, [tenant])
    (tmp_path / tenant).mkdir()
    bad = tmp_path / tenant / "bad.wav"
    bad.write_bytes(b"RIFF not really audio")  # the API does not read an audio_url: the worker fails it
    with RunningApi(settings) as running, httpx.Client(base_url=running.url, timeout=20) as client:
        auth = {"Authorization": f"Bearer {ApiKeys(postgres_url).create(tenant, 'app').token}"}
        posted = client.post("/v1/detections", json={"audio_url": f"file://{bad}"}, headers=auth)
        assert posted.status_code == 202, posted.text
        location = posted.headers["location"]
        # no reporting schema in this database yet: still pending, no error
        assert client.get(location, headers=auth).json()["status"] == "pending"

        migrate_store(postgres_url)
        records = list(
            read_memory_topic(memory_broker(settings.memory.broker), kafka_topic("arrivals", tenant))
        )
        assert len(records) == 1
        key, value, _headers = records[0]
        # another arrival's dead letter, or another tenant's, does not fail this detection
        store_dead_letter(postgres_url, tenant, value + b" ", key, "too_long", 0)
        store_dead_letter(postgres_url, tenants[1], value, key, "too_long", 0)
        assert client.get(location, headers=auth).json()["status"] == "pending"
        store_dead_letter(postgres_url, tenant, value, key, "undecodable_audio", 1)

        read = client.get(location, headers=auth)
        assert read.status_code == 200
        body = read.json()
        assert body["status"] == "failed" and body["verdict"] is None, body
        assert body["failure"]["reason"] == "undecodable_audio"
        assert body["failure"]["category"] == "poison"


def test_usage_carries_the_tenants_scored_audio_from_the_reporting_store(
    postgres_url: str, tenants: list[str], tmp_path: Path
) -> None:
    tenant, other = tenants[0], tenants[1]
    settings = Settings(
        transport="memory",
        tenants=[tenant],
        memory=MemorySettings(broker=f"api-{uuid.uuid4().hex[:8]}"),
        storage=StorageSettings(tenant_file_roots={tenant: [tmp_path / tenant]}),
        database=DatabaseSettings(url=postgres_url),
        api=ApiSettings(key_cache_seconds=0),
    )
    provision_memory(settings, [tenant])
    with RunningApi(settings) as running, httpx.Client(base_url=running.url, timeout=20) as client:
        auth = {"Authorization": f"Bearer {ApiKeys(postgres_url).create(tenant, 'app').token}"}
        assert client.get("/v1/usage", headers=auth).json()["tenant_scored"] is None  # no reporting here

        migrate_store(postgres_url)
        earlier = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
        store = ReportingStore(postgres_url)
        try:
            rows = [
                verdict_row(
                    kafka_topic("verdicts", t), 0, i, verdict_bytes(t, f"k{i}", 0.2, processed_at=earlier)
                )
                for i, t in enumerate([tenant, tenant, other])
            ]
            store.write(rows)
            assert store.close_metering_hours(datetime.now(UTC)) == 2
        finally:
            store.close()
        scored = client.get("/v1/usage", headers=auth).json()["tenant_scored"]
        assert (scored["uploads"], scored["audio_seconds_scored"], scored["dead_letters"]) == (2, 4.0, 0)
        assert [h["uploads"] for h in scored["hours"]] == [2]  # only this tenant's, not `other`'s
