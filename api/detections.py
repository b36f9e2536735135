"""Accepted detections: one row per (tenant, idempotency key) in PostgreSQL.

The row is what the API promised a client: its id, where the audio is, and the pipeline
idempotency key whose verdict `services.store` will hold. The verdict itself is never copied
here; `GET /v1/detections/{id}` reads it back from the worker's verdict store, so the HTTP
answer and the verdict topic can never disagree.

Every lookup names the tenant: an id of another tenant's detection is not found.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.database import connect, mapped_errors

__all__ = ["Detection", "Detections", "Failure", "IdempotencyConflict"]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for a different request."""


@dataclass(frozen=True)
class Detection:
    id: str
    tenant: str
    idempotency_key: str
    client_key: str | None
    request_sha256: str
    content_id: str
    audio_uri: str
    sha256: str | None
    byte_size: int | None
    key_id: str
    created_at: datetime
    published_at: datetime | None
    arrival_sha256: str | None = None


@dataclass(frozen=True)
class Failure:
    """A worker's dead letter for a detection's arrival (from `reporting.dead_letters`)."""

    category: str
    reason: str
    error_class: str
    failed_at: datetime


_COLUMNS = (
    "id, tenant, idempotency_key, client_key, request_sha256, content_id, audio_uri, sha256,"
    " byte_size, key_id, created_at, published_at, arrival_sha256"
)


_INSERT_COLUMNS = _COLUMNS.replace(", created_at, published_at, arrival_sha256", "")

_METER = (
    "INSERT INTO api_usage (key_id, tenant, hour, requests, audio_seconds)"
    " VALUES (%s, %s, date_trunc('hour', now()), 1, %s)"
    " ON CONFLICT (key_id, hour) DO UPDATE SET requests = api_usage.requests + 1,"
    " audio_seconds = api_usage.audio_seconds + excluded.audio_seconds"
)


class Detections:
    def __init__(self, url: str) -> None:
        self.url = url

    def create_or_get(
        self,
        *,
        tenant: str,
        client_key: str | None,
        request_sha256: str,
        content_id: str,
        audio_uri: str,
        sha256: str | None,
        byte_size: int | None,
        key_id: str,
        audio_seconds: float = 0.0,
        callback_url: str | None = None,
    ) -> tuple[Detection, bool]:
        """(the detection, whether it was created now). With a client key already used by this
        tenant: the earlier detection, or IdempotencyConflict when the request differs.

        A new detection is metered for its client (one request and its audio seconds in the
        current hour) in the same transaction: counted exactly once, never for a repeat. Its
        webhook (`callback_url`) is queued in the same transaction too."""
        detection_id = f"det_{uuid.uuid4().hex}"
        pipeline_key = f"api:{client_key}" if client_key else f"api:{detection_id}"
        with connect(self.url) as conn, mapped_errors():
            row = conn.execute(
                f"INSERT INTO api_detections ({_INSERT_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING {_COLUMNS}",
                (
                    detection_id,
                    tenant,
                    pipeline_key,
                    client_key,
                    request_sha256,
                    content_id,
                    audio_uri,
                    sha256,
                    byte_size,
                    key_id,
                ),
            ).fetchone()
            if row is not None:
                conn.execute(_METER, (key_id, tenant, audio_seconds))
                if callback_url:
                    conn.execute(
                        "INSERT INTO api_webhooks (detection_id, tenant, url) VALUES (%s, %s, %s)",
                        (detection_id, tenant, callback_url),
                    )
                return Detection(*row), True
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_detections WHERE tenant = %s AND idempotency_key = %s",
                (tenant, pipeline_key),
            ).fetchone()
        assert row is not None
        existing = Detection(*row)
        if existing.request_sha256 != request_sha256:
            raise IdempotencyConflict(existing.id)
        return existing, False

    def usage(self, key_id: str, start: datetime, end: datetime) -> list[tuple[datetime, int, float]]:
        """(hour, requests, audio seconds) of one client for the hours in [start, end)."""
        with connect(self.url) as conn, mapped_errors():
            rows = conn.execute(
                "SELECT hour, requests, audio_seconds FROM api_usage"
                " WHERE key_id = %s AND hour >= date_trunc('hour', %s::timestamptz) AND hour < %s"
                " ORDER BY hour",
                (key_id, start, end),
            ).fetchall()
        return [(row[0], int(row[1]), float(row[2])) for row in rows]

    def tenant_scored(
        self, tenant: str, start: datetime, end: datetime
    ) -> list[tuple[datetime, int, float, int]] | None:
        """(hour, uploads, audio seconds scored, dead letters) of the tenant's closed hours in
        [start, end) from the reporting pipeline's `reporting.metering_hourly` (every transport
        and client of the tenant, not only this API); None when there is no reporting schema."""
        with connect(self.url) as conn, mapped_errors():
            present = conn.execute("SELECT to_regclass('reporting.metering_hourly') IS NOT NULL").fetchone()
            if not present or not present[0]:
                return None
            rows = conn.execute(
                "SELECT hour, uploads, audio_seconds_scored, dead_letters FROM reporting.metering_hourly"
                " WHERE tenant_id = %s AND hour >= date_trunc('hour', %s::timestamptz) AND hour < %s"
                " ORDER BY hour",
                (tenant, start, end),
            ).fetchall()
        return [(row[0], int(row[1]), float(row[2]), int(row[3])) for row in rows]

    def mark_published(self, detection_id: str, arrival_sha256: str | None = None) -> None:
        with connect(self.url) as conn, mapped_errors():
            conn.execute(
                "UPDATE api_detections SET published_at = now(), arrival_sha256 = %s"
                " WHERE id = %s AND published_at IS NULL",
                (arrival_sha256, detection_id),
            )

    def failure(self, detection: Detection) -> Failure | None:
        """The latest dead letter of this detection's arrival, if the reporting pipeline
        (`audioguard report run`, `reporting.dead_letters` in this database) has recorded one:
        same tenant, the payload's sha256 equal to the arrival the API published, written after
        the detection was created. None when there is none, or no reporting schema here."""
        if detection.arrival_sha256 is None:
            return None
        with connect(self.url) as conn, mapped_errors():
            present = conn.execute("SELECT to_regclass('reporting.dead_letters') IS NOT NULL").fetchone()
            if not present or not present[0]:
                return None
            row = conn.execute(
                "SELECT category, reason, error_class, last_failed_at FROM reporting.dead_letters"
                " WHERE tenant_id = %s AND last_failed_at >= %s AND envelope->>'payload_sha256' = %s"
                " ORDER BY last_failed_at DESC, id DESC LIMIT 1",
                (detection.tenant, detection.created_at, detection.arrival_sha256),
            ).fetchone()
        return None if row is None else Failure(*row)

    def get(self, tenant: str, detection_id: str) -> Detection | None:
        with connect(self.url) as conn, mapped_errors():
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_detections WHERE tenant = %s AND id = %s", (tenant, detection_id)
            ).fetchone()
        return None if row is None else Detection(*row)

    def check(self) -> None:
        with connect(self.url, connect_timeout=2) as conn, mapped_errors():
            conn.execute("SELECT 1")
