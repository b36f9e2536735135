"""What a platform does to publish an arrival: the AudioArrival event for one stored upload.

The CLI's `publish`, the demo, the bench, the load and crash tests and the test suite all
build arrivals here, so they publish what a real platform would.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from schemas import AudioArrival


def arrival_for(tenant: str, uri: str, data: bytes, *, key: str, content_id: str) -> bytes:
    """The AudioArrival a platform would publish for one stored upload."""
    arrival = AudioArrival(
        event_id=str(uuid.uuid4()),
        idempotency_key=key,
        tenant_id=tenant,
        content_id=content_id,
        audio_uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        byte_size=len(data),
        submitted_at=datetime.now(UTC),
    )
    return arrival.model_dump_json().encode()
