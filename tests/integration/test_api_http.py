"""The HTTP API over real uvicorn, PostgreSQL and Redis, publishing to the in-process broker:
auth (missing, wrong, revoked, read-only, other-tenant keys), idempotency, limits, problems."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from api.keys import ApiKeys
from consumers.tenancy import kafka_topic
from consumers.transports.memory import memory_broker, provision_memory, read_memory_topic
from schemas import AudioArrival
from services.settings import ApiSettings, DatabaseSettings, MemorySettings, Settings, StorageSettings
from tests.support.api_server import RunningApi
from tests.support.audio import encode, speechlike

PROBLEM = "application/problem+json"


@pytest.fixture
def api_env(postgres_url: str, redis_url: str, tenants: list[str], tmp_path: Path):
    settings = Settings(
        transport="memory",
        tenants=tenants[:2],
        memory=MemorySettings(broker=f"api-{uuid.uuid4().hex[:8]}"),
        storage=StorageSettings(tenant_file_roots={t: [tmp_path / t] for t in tenants}),
        database=DatabaseSettings(url=postgres_url),
        api=ApiSettings(
            key_cache_seconds=0,
            rate_limit_url=redis_url,
            rate_limit_key_prefix=f"test-{uuid.uuid4().hex[:8]}",
            # one request per 100 s after the burst: a loaded machine cannot refill a token mid-test
            rate_limit_per_second=0.01,
            rate_limit_burst=30,
        ),
    )
    provision_memory(settings, tenants[:2])
    with RunningApi(settings) as running:
        keys = ApiKeys(postgres_url)
        yield settings, running, keys


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _clip(seed: int = 0) -> bytes:
    return encode(speechlike(1.0, seed=seed))


def _upload(client: httpx.Client, token: str, data: bytes, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/detections",
        files={"file": ("clip.wav", data, "audio/wav")},
        headers={**_auth(token), **headers},
    )


def test_health_ready_and_metrics(api_env) -> None:
    _, running, _ = api_env
    with httpx.Client(base_url=running.url, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "store": "ok"}
        metrics = client.get("/metrics")
        assert "audioguard_api_requests_total" in metrics.text


def test_upload_is_stored_published_and_idempotent(api_env) -> None:
    settings, running, keys = api_env
    tenant = settings.tenants[0]
    token = keys.create(tenant, "acme-app").token
    data = _clip(1)
    with httpx.Client(base_url=running.url, timeout=20) as client:
        first = _upload(client, token, data, **{"Idempotency-Key": "upload-1"})
        assert first.status_code == 202, first.text
        body = first.json()
        assert first.headers["location"] == f"/v1/detections/{body['id']}"
        assert (body["status"], body["tenant"], body["idempotency_key"]) == ("pending", tenant, "upload-1")
        stored = Path(body["audio_uri"].removeprefix("file://"))
        assert stored.read_bytes() == data and stored.is_relative_to(
            settings.storage.tenant_file_roots[tenant][0]
        )
        again = _upload(client, token, data, **{"Idempotency-Key": "upload-1"})
        assert again.json()["id"] == body["id"]
        other_audio = _upload(client, token, _clip(2), **{"Idempotency-Key": "upload-1"})
        assert other_audio.status_code == 409 and other_audio.json()["code"] == "idempotency_key_reused"
        read = client.get(
            body["location"] if "location" in body else first.headers["location"], headers=_auth(token)
        )
        assert read.status_code == 200 and read.json()["status"] == "pending"

    records = list(
        read_memory_topic(
            memory_broker(settings.memory.broker), kafka_topic("arrivals", tenant), follow=False
        )
    )
    assert len(records) == 1  # the repeated POST did not publish again
    key, value, _headers = records[0]
    arrival = AudioArrival.model_validate_json(value)
    assert (arrival.tenant_id, arrival.idempotency_key, arrival.audio_uri) == (
        tenant,
        "api:upload-1",
        body["audio_uri"],
    )
    assert key == b"api:upload-1" and arrival.sha256 == body["sha256"]


def test_missing_wrong_revoked_read_only_and_other_tenant_keys(api_env) -> None:
    settings, running, keys = api_env
    mine, theirs = settings.tenants
    issued = keys.create(mine, "app")
    revoked = keys.create(mine, "old")
    keys.revoke(revoked.key.key_id)
    reader = keys.create(mine, "dashboard", ("detections:read",))
    stranger = keys.create(theirs, "other")
    with httpx.Client(base_url=running.url, timeout=20) as client:
        created = _upload(client, issued.token, _clip(3))
        assert created.status_code == 202
        path = created.headers["location"]

        missing = client.get(path)
        assert missing.status_code == 401 and missing.headers["content-type"] == PROBLEM
        assert missing.json()["code"] == "missing_api_key" and missing.headers["www-authenticate"]
        wrong = issued.token[:-4] + ("aaaa" if not issued.token.endswith("aaaa") else "bbbb")
        for token in (wrong, revoked.token, "not-a-key"):
            answer = client.get(path, headers=_auth(token))
            assert (answer.status_code, answer.json()["code"]) == (401, "invalid_api_key"), token
        read_only = _upload(client, reader.token, _clip(4))
        assert (read_only.status_code, read_only.json()["code"]) == (403, "insufficient_scope")
        assert client.get(path, headers=_auth(reader.token)).status_code == 200
        # another tenant's key: the same answer as an id that never existed
        other = client.get(path, headers=_auth(stranger.token))
        never = client.get("/v1/detections/det_0000", headers=_auth(stranger.token))
        assert other.status_code == never.status_code == 404
        assert other.json()["code"] == never.json()["code"] == "not_found"


def test_bad_requests_get_problems_with_stable_codes(api_env) -> None:
    settings, running, keys = api_env
    tenant, other = settings.tenants
    token = keys.create(tenant, "app").token
    outside = settings.storage.tenant_file_roots[other][0] / "x.wav"
    with httpx.Client(base_url=running.url, timeout=20) as client:
        cases = {
            "unsupported_media_type": client.post(
                "/v1/detections", content=b"abc", headers={**_auth(token), "Content-Type": "text/plain"}
            ),
            "unsupported_url_scheme": client.post(
                "/v1/detections", json={"audio_url": "http://169.254.169.254/x.wav"}, headers=_auth(token)
            ),
            "uri_outside_roots": client.post(
                "/v1/detections", json={"audio_url": f"file://{outside}"}, headers=_auth(token)
            ),
            "path_traversal": client.post(
                "/v1/detections", json={"audio_url": "file:///a/../etc/passwd"}, headers=_auth(token)
            ),
            "invalid_request": client.post("/v1/detections", json={"audio": "x"}, headers=_auth(token)),
            "undecodable_audio": _upload(client, token, b"RIFF-but-not-really-a-wave-file"),
            "missing_file": client.post(
                "/v1/detections", files={"other": ("a.wav", b"x")}, headers=_auth(token)
            ),
        }
        for code, answer in cases.items():
            assert answer.headers["content-type"] == PROBLEM, (code, answer.text)
            assert answer.json()["code"] == code, (code, answer.text)
            assert answer.json()["status"] == answer.status_code
        part = client.post(
            "/v1/detections", files={"file": ("a.txt", _clip(), "text/plain")}, headers=_auth(token)
        )
        assert (part.status_code, part.json()["code"]) == (415, "unsupported_media_type")
        big = client.post(
            "/v1/detections",
            content=b"0" * (settings.api.max_body_bytes + 1),
            headers={**_auth(token), "Content-Type": "application/json"},
        )
        assert (big.status_code, big.json()["code"]) == (413, "body_too_large")
        bad_key = _upload(client, token, _clip(), **{"Idempotency-Key": "x" * 161})
        assert bad_key.status_code == 422


def test_url_detection_is_published_for_the_worker_to_fetch(api_env) -> None:
    settings, running, keys = api_env
    tenant = settings.tenants[0]
    token = keys.create(tenant, "app").token
    path = settings.storage.tenant_file_roots[tenant][0] / "in-storage.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_clip(5))
    with httpx.Client(base_url=running.url, timeout=20) as client:
        answer = client.post(
            "/v1/detections", json={"audio_url": f"file://{path}", "content_id": "c-5"}, headers=_auth(token)
        )
    assert answer.status_code == 202, answer.text
    records = list(
        read_memory_topic(
            memory_broker(settings.memory.broker), kafka_topic("arrivals", tenant), follow=False
        )
    )
    arrival = AudioArrival.model_validate_json(records[-1][1])
    assert (arrival.audio_uri, arrival.content_id) == (f"file://{path}", "c-5")


def test_one_client_over_its_limit_leaves_other_clients_alone(api_env) -> None:
    settings, running, keys = api_env
    mine, theirs = settings.tenants
    noisy, quiet, elsewhere = (
        keys.create(mine, "noisy"),
        keys.create(mine, "quiet"),
        keys.create(theirs, "else"),
    )
    burst = settings.api.rate_limit_burst
    with httpx.Client(base_url=running.url, timeout=20) as client:
        answers = [client.get("/v1/detections/det_x", headers=_auth(noisy.token)) for _ in range(burst + 3)]
        statuses = [a.status_code for a in answers]
        assert statuses[:burst] == [404] * burst, statuses
        assert statuses[burst:] == [429] * 3, statuses
        limited = answers[-1]
        assert limited.json()["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["ratelimit-limit"] == str(burst)
        assert limited.headers["ratelimit-remaining"] == "0"
        assert int(answers[0].headers["ratelimit-remaining"]) == burst - 1
        for other in (quiet, elsewhere):
            answer = client.get("/v1/detections/det_x", headers=_auth(other.token))
            assert answer.status_code == 404, answer.text
            assert int(answer.headers["ratelimit-remaining"]) == burst - 1


def test_usage_counts_each_accepted_detection_once_per_client(api_env) -> None:
    settings, running, keys = api_env
    tenant = settings.tenants[0]
    metered, idle = keys.create(tenant, "metered").token, keys.create(tenant, "idle").token
    with httpx.Client(base_url=running.url, timeout=20) as client:
        for seed, key in ((10, "u-1"), (10, "u-1"), (11, "u-2")):
            assert _upload(client, metered, _clip(seed), **{"Idempotency-Key": key}).status_code == 202
        usage = client.get("/v1/usage", headers=_auth(metered))
        assert usage.status_code == 200, usage.text
        body = usage.json()
        assert (body["requests"], body["audio_seconds"]) == (2, 2.0)  # two 1-second clips; the repeat is free
        assert len(body["hours"]) == 1 and body["hours"][0]["requests"] == 2
        assert client.get("/v1/usage", headers=_auth(idle)).json()["requests"] == 0
        backwards = client.get(
            "/v1/usage",
            params={"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
            headers=_auth(idle),
        )
        assert (backwards.status_code, backwards.json()["code"]) == (422, "invalid_range")


def test_audio_seconds_limit_refuses_the_upload_past_it(api_env) -> None:
    settings, _, keys = api_env
    limited = settings.model_copy(
        update={
            "api": settings.api.model_copy(
                update={"rate_limit_audio_seconds_per_second": 0.01, "rate_limit_audio_burst_seconds": 2}
            )
        }
    )
    token = keys.create(settings.tenants[0], "audio").token
    with RunningApi(limited) as running, httpx.Client(base_url=running.url, timeout=20) as client:
        answers = [_upload(client, token, _clip(20 + i)) for i in range(3)]  # 1 s each
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[2].json()["code"] == "audio_rate_limited" and int(answers[2].headers["retry-after"]) >= 1
