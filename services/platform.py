"""What a platform does to publish an arrival: the AudioArrival event for one stored upload.

The CLI's `publish`, the demo, the bench, the load and crash tests and the test suite all
build arrivals here, so they publish what a real platform would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime

from schemas import AudioArrival

#: the shared arrivals topic and its signed tenant headers (consumers.tenancy checks them)
SHARED_ARRIVALS_TOPIC = "audioguard.arrivals._shared"
TENANT_HEADER = "ag-tenant"
SIGNATURE_HEADER = "ag-tenant-signature"


def arrival_for(tenant: str, uri: str, data: bytes, *, key: str, content_id: str) -> bytes:
    """The AudioArrival a platform would publish for one stored upload."""
    sha256 = hashlib.sha256(data).hexdigest()
    return arrival_for_uri(tenant, uri, key=key, content_id=content_id, sha256=sha256, byte_size=len(data))


def arrival_for_uri(
    tenant: str,
    uri: str,
    *,
    key: str,
    content_id: str,
    sha256: str | None = None,
    byte_size: int | None = None,
    attributes: dict[str, str] | None = None,
) -> bytes:
    """The AudioArrival for audio already in storage, whose bytes the publisher may not have read
    (the HTTP API's `audio_url`): the worker fetches, checks and scores it."""
    arrival = AudioArrival(
        event_id=str(uuid.uuid4()),
        idempotency_key=key,
        tenant_id=tenant,
        content_id=content_id,
        audio_uri=uri,
        sha256=sha256,
        byte_size=byte_size,
        submitted_at=datetime.now(UTC),
        attributes=attributes or {},
    )
    return arrival.model_dump_json().encode()


def sign_tenant(secret: bytes, tenant: str, idempotency_key: str, payload: bytes) -> str:
    """The `ag-tenant-signature` of a shared-topic record: hex HMAC-SHA256(secret, tenant +
    "\\n" + idempotency key + "\\n" + hex sha256 of the payload)."""
    message = f"{tenant}\n{idempotency_key}\n{hashlib.sha256(payload).hexdigest()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def shared_headers(tenant: str, secret: bytes, arrival: bytes) -> list[tuple[str, bytes]]:
    """The headers that prove `arrival` is `tenant`'s on the shared topic (`sign_tenant`).
    Only the API layer and the tenant's own producer hold `secret`; the worker checks it
    (consumers.tenancy.SharedTopic). Publish the arrival with them to SHARED_ARRIVALS_TOPIC."""
    signature = sign_tenant(secret, tenant, json.loads(arrival)["idempotency_key"], arrival)
    return [(TENANT_HEADER, tenant.encode()), (SIGNATURE_HEADER, signature.encode())]
