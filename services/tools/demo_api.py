"""`audioguard demo --api`: one detection over HTTP against the demo's running worker.

Starts the API (uvicorn on a free loopback port, tables migrated in `database.url`), issues a
demo key, POSTs one bundled clip with `Prefer: wait` and prints what came back: the same path
a platform without a broker takes (docs/api.md).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from services.settings import ApiSettings, DatabaseSettings, Settings


def api_detection(settings: Settings, database_url: str, clip: Path, console: Any) -> bool:
    """True when the HTTP detection came back with a verdict."""
    import httpx

    from api.keys import ApiKeys
    from api.server import ServerThread

    settings = settings.model_copy(
        update={"database": DatabaseSettings(url=database_url), "api": ApiSettings(max_wait_seconds=60)}
    )
    with ServerThread(settings, webhooks=False) as server:
        tenant = settings.tenants[0]
        token = ApiKeys(database_url).create(tenant, "demo").token
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=90) as client:
            answer = client.post(
                "/v1/detections",
                files={"file": (clip.name, clip.read_bytes(), "audio/wav")},
                headers={
                    "Authorization": f"Bearer {token}",
                    "Prefer": "wait=45",
                    "Idempotency-Key": f"demo-{uuid.uuid4().hex[:12]}",
                },
            )
        took = time.monotonic() - started
    body = answer.json()
    verdict = body.get("verdict") or {}
    outcome = body.get("status", body.get("code"))
    score = float(verdict.get("score", float("nan")))
    console.print(
        f"[bold]api[/] POST /v1/detections ({tenant}, {clip.name}, Prefer: wait=45) -> "
        f"{answer.status_code} {outcome} label={verdict.get('label', '-')} score={score:.3f} "
        f"in {took:.2f}s; then GET {answer.headers.get('location')}",
        highlight=False,
    )
    return answer.status_code == 200 and bool(verdict)
