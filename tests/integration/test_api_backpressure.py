"""Pipeline backpressure over HTTP: with no worker consuming, a tenant whose arrivals topic is
more than api.max_tenant_lag_messages behind gets 503 + Retry-After instead of more queueing;
another tenant is unaffected (real Tansu, uvicorn, PostgreSQL)."""

from __future__ import annotations

import httpx

from api.keys import ApiKeys
from services.settings import ApiSettings, DatabaseSettings
from tests.support.api_server import RunningApi
from tests.support.audio import encode, speechlike
from tests.support.pipeline import make_settings, provision


def test_a_tenant_behind_its_bound_gets_503_and_another_tenant_does_not(
    broker, tenants, audio_root, postgres_url
) -> None:
    busy, calm = tenants[:2]
    settings = make_settings(
        broker.bootstrap_servers,
        [busy, calm],
        audio_root,
        database=DatabaseSettings(url=postgres_url),
        api=ApiSettings(max_tenant_lag_messages=2, lag_refresh_seconds=0),
    )
    provision(settings, partitions=1)
    tokens: dict[str, str] = {}

    def post(client: httpx.Client, tenant: str, seed: int) -> httpx.Response:
        return client.post(
            "/v1/detections",
            files={"file": ("c.wav", encode(speechlike(1.0, seed=seed)), "audio/wav")},
            headers={"Authorization": f"Bearer {tokens[tenant]}"},
        )

    with RunningApi(settings) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        tokens.update({t: ApiKeys(postgres_url).create(t, "app").token for t in (busy, calm)})
        statuses = [post(client, busy, i).status_code for i in range(4)]
        assert statuses == [202, 202, 202, 503], statuses  # lag 0, 1, 2 pass; 3 > 2 is refused
        refused = post(client, busy, 9)
        assert refused.json()["code"] == "pipeline_backpressure" and refused.headers["retry-after"] == "5"
        assert post(client, calm, 10).status_code == 202
