"""One HTTP detection end to end: uvicorn -> Tansu -> a real worker -> the Redis verdict store
-> the HTTP answer, with API keys in PostgreSQL."""

from __future__ import annotations

import json
import uuid

import httpx
import jsonschema

from api.keys import ApiKeys
from schemas import SCHEMA_DIR
from services.settings import ApiSettings, DatabaseSettings
from tests.support.api_server import RunningApi
from tests.support.audio import encode, speechlike
from tests.support.pipeline import RunningWorker, make_settings, provision, read_destination


def test_post_with_wait_returns_the_workers_verdict_and_a_repeat_is_the_same_detection(
    broker, detector, tenants, audio_root, postgres_url, redis_url
) -> None:
    tenant = tenants[0]
    settings = make_settings(
        broker.bootstrap_servers,
        [tenant],
        audio_root,
        store_url=redis_url,
        database=DatabaseSettings(url=postgres_url),
        api=ApiSettings(key_cache_seconds=0, max_wait_seconds=60),
    )
    provision(settings, partitions=1)
    (audio_root / tenant).mkdir(parents=True, exist_ok=True)
    clip = encode(speechlike(2.0, seed=7))
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    with RunningApi(settings) as api, RunningWorker(settings, detector) as worker:
        token = ApiKeys(postgres_url).create(tenant, "e2e").token
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key, "Prefer": "wait=45"}
        with httpx.Client(base_url=api.url, timeout=90) as client:
            first = client.post(
                "/v1/detections", files={"file": ("c.wav", clip, "audio/wav")}, headers=headers
            )
            assert first.status_code == 200, first.text
            body = first.json()
            assert body["status"] == "done" and first.headers["preference-applied"] == "wait=45"
            verdict = body["verdict"]
            jsonschema.validate(verdict, json.loads((SCHEMA_DIR / "verdict.schema.json").read_text()))
            assert (verdict["tenant_id"], verdict["idempotency_key"]) == (tenant, f"api:{key}")
            assert verdict["label"] in ("synthetic", "bona_fide", "inconclusive")

            again = client.post(
                "/v1/detections", files={"file": ("c.wav", clip, "audio/wav")}, headers=headers
            )
            assert again.status_code == 200
            assert again.json()["id"] == body["id"] and again.json()["verdict"] == verdict
            read = client.get(f"/v1/detections/{body['id']}", headers={"Authorization": f"Bearer {token}"})
            assert read.json()["verdict"] == verdict
        assert worker.wait_for(lambda: worker.worker.pipeline.stats.acked >= 1, timeout=30)
    # scored once: one arrival was published, one verdict is on the tenant's topic
    records = read_destination(settings, tenant, idle=1.0)
    assert [r[0] for r in records] == [f"api:{key}".encode()]
