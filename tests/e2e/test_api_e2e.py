"""One HTTP detection end to end: uvicorn -> Tansu -> a real worker -> the Redis verdict store
-> the HTTP answer, with API keys in PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jsonschema

from api.keys import ApiKeys
from schemas import SCHEMA_DIR
from services.settings import ApiSettings, DatabaseSettings
from tests.support.api_server import RunningApi
from tests.support.audio import encode, speechlike
from tests.support.pipeline import RunningWorker, make_settings, provision, read_destination

ROOT = Path(__file__).resolve().parents[2]


def _provisioned(broker, tenant: str, audio_root: Path, postgres_url: str, redis_url: str):
    """One tenant on the session's broker with the API's settings (keys checked every request,
    waits up to 60 s), its topics created and its storage root present."""
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
    return settings


def test_post_with_wait_returns_the_workers_verdict_and_a_repeat_is_the_same_detection(
    broker, detector, tenants, audio_root, postgres_url, redis_url
) -> None:
    tenant = tenants[0]
    settings = _provisioned(broker, tenant, audio_root, postgres_url, redis_url)
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


def test_an_arrival_the_worker_dead_letters_is_failed_over_http(
    broker, detector, tenants, audio_root, postgres_url, redis_url, tmp_path
) -> None:
    """An audio_url that is not audio: the API accepts it (it never reads an audio_url), the
    worker dead-letters it, `audioguard report run` stores the dead letter, GET says failed."""
    tenant = tenants[0]
    settings = _provisioned(broker, tenant, audio_root, postgres_url, redis_url)
    bad = audio_root / tenant / f"bad-{uuid.uuid4().hex[:6]}.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVE but nothing decodable follows")
    report_log = tmp_path / "reporting.log"
    args = [
        sys.executable, "-m", "services.cli", "report", "run", "--database-url", postgres_url,
        "--bootstrap-servers", broker.bootstrap_servers, "--app-id", f"reporting-{uuid.uuid4().hex[:6]}",
        "--data-dir", str(tmp_path / "faust"), "--batch-records", "50", "--batch-seconds", "0.2",
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(ROOT), "AUDIOGUARD_LOG_FORMAT": "text"}
    with report_log.open("ab") as out:
        reporting = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with RunningApi(settings) as api, RunningWorker(settings, detector):
            token = ApiKeys(postgres_url).create(tenant, "e2e").token
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=api.url, timeout=90) as client:
                posted = client.post("/v1/detections", json={"audio_url": f"file://{bad}"}, headers=auth)
                assert posted.status_code == 202, posted.text
                deadline = time.monotonic() + 120
                body = posted.json()
                while body["status"] == "pending" and time.monotonic() < deadline:
                    time.sleep(0.5)
                    body = client.get(posted.headers["location"], headers=auth).json()
        assert body["status"] == "failed", report_log.read_text(errors="replace")[-3000:]
        assert body["failure"]["category"] == "poison" and body["verdict"] is None
        assert body["failure"]["reason"] == "undecodable_audio", body
    finally:
        reporting.terminate()
        try:
            reporting.wait(30)
        except subprocess.TimeoutExpired:
            reporting.kill()
            reporting.wait(10)
