"""The committed OpenAPI document is the app's, and the in-process GCRA limiter keeps its promise."""

from __future__ import annotations

import json

from api.app import OPENAPI_PATH, openapi_document
from api.ratelimit import MemoryLimiter


def test_committed_openapi_matches_the_app() -> None:
    committed = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(openapi_document())), (
        "api/openapi.json is stale: run `audioguard api openapi`"
    )
    paths = committed["paths"]
    assert {"/v1/detections", "/v1/detections/{detection_id}", "/healthz", "/readyz"} <= set(paths)
    assert "HTTPBearer" in committed["components"]["securitySchemes"]
    body = paths["/v1/detections"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def test_gcra_allows_the_burst_then_one_per_interval() -> None:
    now = [100.0]
    limiter = MemoryLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    first = [limiter.hit("a") for _ in range(4)]
    assert [d.allowed for d in first] == [True, True, True, False]
    assert [d.remaining for d in first[:3]] == [2, 1, 0]
    assert first[3].retry_after_seconds == 0.5 and first[3].headers()["Retry-After"] == "1"
    assert limiter.hit("b").allowed  # another client has its own bucket
    now[0] += 0.5
    assert limiter.hit("a").allowed and not limiter.hit("a").allowed
    now[0] += 10
    assert [limiter.hit("a").allowed for _ in range(4)] == [True, True, True, False]


def test_gcra_with_costs_limits_audio_seconds() -> None:
    now = [0.0]
    limiter = MemoryLimiter(rate=1.0, burst=10, clock=lambda: now[0])  # 1 audio s/s, 10 s at once
    assert limiter.hit("a", cost=6).allowed
    refused = limiter.hit("a", cost=6)
    assert not refused.allowed and refused.retry_after_seconds == 2.0
    now[0] += 2
    assert limiter.hit("a", cost=6).allowed
