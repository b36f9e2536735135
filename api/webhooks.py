"""Webhooks: a signed POST to the client's callback_url once its detection has a verdict
(``detection.completed``), or once its arrival was dead-lettered (``detection.failed``).

Signature: ``AudioGuard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
with the key's webhook secret; a receiver recomputes it over the raw body, compares in constant
time and refuses an old `t` (docs/api.md has the snippet). Deliveries are rows in
``api_webhooks``; any API replica's dispatcher claims due rows (``FOR UPDATE SKIP LOCKED`` plus a
short lease), so each delivery attempt is made by one replica. A failed attempt (connection
error, timeout, non-2xx) is retried with exponential backoff and jitter; after the last one the
row is dead (state ``dead`` with the last error) and stays for inspection.

SSRF guard: only http(s), no credentials in the URL, and every address the host resolves to
must be global (not loopback, private, link-local, multicast, reserved) unless
``api.webhook_allow_private_hosts``. It runs when the callback is accepted and again before
each attempt (a name may be re-pointed in between). Redirects are not followed; at most
``webhook_max_response_bytes`` of an answer is read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from api.detections import Detection, Detections, Failure
from consumers.transport import Message, OutRecord, Sink
from dlq.envelope import build_dead_letter, dead_letter_record
from services.database import connect, mapped_errors
from services.errors import RetryableError
from services.retry import jittered
from services.settings import ApiSettings
from services.store import VerdictStore

__all__ = [
    "WEBHOOK_DEAD_LETTER_REASONS",
    "CallbackRefused",
    "WebhookDispatcher",
    "requeue_webhook",
    "webhook_dead_letter",
    "check_callback_url",
    "list_webhooks",
    "retry_webhook",
    "sign",
]

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "AudioGuard-Signature"


class CallbackRefused(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


#: the reasons of a dead webhook's dead letter: every attempt failed / the verdict never came
WEBHOOK_DEAD_LETTER_REASONS = ("webhook_failed", "webhook_no_verdict")


def webhook_dead_letter(
    tenant: str,
    detection_id: str,
    url: str,
    reason: str,
    error: str,
    attempts: int,
    *,
    transport: str,
    first_seen_at: datetime,
) -> OutRecord:
    """The record for the tenant's DLQ when a webhook is dead, in the worker's envelope: the
    payload is ``{"detection_id", "callback_url"}`` (the record key: the detection id), the
    source topic ``audioguard.webhooks.<tenant>``, category ``retries_exhausted``. `audioguard
    dlq replay` hands such a letter to `requeue_webhook` instead of republishing it."""
    payload = json.dumps({"detection_id": detection_id, "callback_url": url}, separators=(",", ":")).encode()
    message = Message(
        token=None,
        tenant=tenant,
        topic=f"audioguard.webhooks.{tenant}",
        value=payload,
        key=detection_id.encode(),
        delivery_attempt=max(1, attempts),
    )
    envelope = build_dead_letter(
        message,
        RetryableError(reason, error[:2000]),
        attempt=max(1, attempts),
        first_seen_at=first_seen_at,
        worker_id=f"api-webhooks@{socket.gethostname()}",
        model_version="n/a",
        transport=transport,
    )
    return dead_letter_record(message, envelope, with_headers=transport != "kinesis")


def requeue_webhook(database_url: str, tenant: str, payload: bytes) -> bool:
    """Replay of a dead webhook's dead letter: the webhook is sent again from attempt 1 by a
    running `api serve`. True when it was re-queued, False when it is no longer dead (already
    retried or delivered: nothing to do); ValueError for a payload that names no webhook of
    this tenant (the dead letter stays queued)."""
    try:
        detection_id = str(json.loads(payload)["detection_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a dead webhook's payload: {error}") from error
    with connect(database_url) as conn, mapped_errors():
        row = conn.execute(
            "SELECT state FROM api_webhooks WHERE detection_id = %s AND tenant = %s", (detection_id, tenant)
        ).fetchone()
    if row is None:
        raise ValueError(f"no webhook of tenant {tenant!r} for detection {detection_id!r}")
    return retry_webhook(database_url, detection_id)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Raise CallbackRefused unless `url` may receive a webhook (see the module docstring)."""
    if len(url) > 2048:
        raise CallbackRefused("callback_url_invalid", "callback_url is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise CallbackRefused("callback_url_invalid", f"callback_url is not a URL: {error}") from error
    if parts.scheme not in ("https", "http"):
        raise CallbackRefused("unsupported_callback_scheme", "callback_url must be https:// or http://")
    if not parts.hostname:
        raise CallbackRefused("callback_url_invalid", "callback_url has no host")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url_invalid", "callback_url must not carry credentials")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise CallbackRefused(
            "callback_host_unresolvable", f"cannot resolve {parts.hostname[:100]}"
        ) from error
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address.is_multicast or address.is_unspecified:
            raise CallbackRefused("callback_url_not_allowed", f"{parts.hostname[:100]} is not a unicast host")
        if not allow_private and not address.is_global:
            raise CallbackRefused(
                "callback_url_not_allowed",
                f"{parts.hostname[:100]} resolves to a non-public address; webhooks go to public hosts only",
            )


class WebhookDispatcher:
    """A thread delivering due webhooks until `stop()`. `render(detection, verdict, failure)` is
    the body (one of the two is set)."""

    LEASE_SECONDS = 60

    def __init__(
        self,
        database_url: str,
        detections: Detections,
        store: VerdictStore,
        settings: ApiSettings,
        render: Callable[[Detection, bytes | None, Failure | None], bytes],
        *,
        dead_letters: Sink | None = None,
        transport: str = "memory",
    ) -> None:
        self.url = database_url
        self.detections = detections
        self.store = store
        self.settings = settings
        self.render = render
        self.dead_letters = dead_letters
        self.transport = transport
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    def start(self) -> WebhookDispatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.webhook_poll_seconds):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a bad row or a database blip must not end the thread
                log.exception("webhook dispatch round failed")

    def run_once(self) -> int:
        """Claim the due deliveries and try each once; returns how many were tried."""
        with connect(self.url) as conn, mapped_errors():
            rows = conn.execute(
                "UPDATE api_webhooks SET next_attempt_at = now() + make_interval(secs => %s)"
                " WHERE detection_id IN (SELECT detection_id FROM api_webhooks WHERE state = 'pending'"
                " AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED)"
                " RETURNING detection_id, tenant, url, attempts, extract(epoch FROM now() - created_at)",
                (self.LEASE_SECONDS,),
            ).fetchall()
        for detection_id, tenant, url, attempts, age in rows:
            self._attempt(str(detection_id), str(tenant), str(url), int(attempts), float(age))
        return len(rows)

    def _attempt(self, detection_id: str, tenant: str, url: str, attempts: int, age: float) -> None:
        detection = self.detections.get(tenant, detection_id)
        verdict = self.store.get(tenant, detection.idempotency_key) if detection else None
        failure = self.detections.failure(detection) if detection and verdict is None else None
        if detection is None or (verdict is None and failure is None):
            if age > self.settings.webhook_verdict_timeout_seconds:
                why = "no_verdict: the detection has no verdict in time"
                self._finish(detection_id, "dead", why)
                self._dead_letter(tenant, detection_id, url, "webhook_no_verdict", why, attempts, age)
            else:
                self._reschedule(detection_id, attempts, self.settings.webhook_poll_seconds, None)
            return
        error = self._deliver(url, detection, verdict, failure, attempts + 1)
        if error is None:
            self._finish(detection_id, "delivered", None, attempts + 1)
        elif attempts + 1 >= self.settings.webhook_max_attempts:
            log.warning("webhook for %s dead after %d attempts: %s", detection_id, attempts + 1, error)
            self._finish(detection_id, "dead", error, attempts + 1)
            self._dead_letter(tenant, detection_id, url, "webhook_failed", error, attempts + 1, age)
        else:
            backoff = min(
                self.settings.webhook_max_backoff_seconds,
                self.settings.webhook_initial_backoff_seconds * 2**attempts,
            )
            self._reschedule(detection_id, attempts + 1, jittered(backoff), error)

    def _dead_letter(
        self, tenant: str, detection_id: str, url: str, reason: str, error: str, attempts: int, age: float
    ) -> None:
        """Put the dead webhook on the tenant's DLQ, where `audioguard dlq list/show/replay` see it.
        If that fails, the row is still dead (`api webhooks retry` works): logged, not raised."""
        if self.dead_letters is None:
            return
        try:
            record = webhook_dead_letter(
                tenant,
                detection_id,
                url,
                reason,
                error,
                attempts,
                transport=self.transport,
                first_seen_at=datetime.fromtimestamp(time.time() - age, UTC),
            )
            future = self.dead_letters.publish(record)
            self.dead_letters.flush(self.settings.webhook_timeout_seconds + 10)
            future.result(self.settings.webhook_timeout_seconds + 10)
        except Exception as failure:  # noqa: BLE001 - the dispatcher thread must go on
            log.warning("dead webhook %s could not be dead-lettered: %s", detection_id, failure)

    def _deliver(
        self, url: str, detection: Detection, verdict: bytes | None, failure: Failure | None, attempt: int
    ) -> str | None:
        """None when the receiver took it (2xx), else why not."""
        try:
            check_callback_url(url, allow_private=self.settings.webhook_allow_private_hosts)
        except CallbackRefused as refused:
            return f"{refused.code}: {refused.detail}"
        body = self.render(detection, verdict, failure)
        secret = self._secret(detection.key_id)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            "AudioGuard-Delivery": detection.id,
            "AudioGuard-Attempt": str(attempt),
        }
        try:
            with self._client.stream("POST", url, content=body, headers=headers) as response:
                read = 0
                for chunk in response.iter_bytes():
                    read += len(chunk)
                    if read >= self.settings.webhook_max_response_bytes:
                        break
                status = response.status_code
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"[:500]
        return None if 200 <= status < 300 else f"receiver answered {status}"

    def _secret(self, key_id: str) -> str:
        with connect(self.url) as conn, mapped_errors():
            row = conn.execute("SELECT webhook_secret FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
        return str(row[0]) if row else ""

    def _reschedule(self, detection_id: str, attempts: int, delay: float, error: str | None) -> None:
        with connect(self.url) as conn, mapped_errors():
            conn.execute(
                "UPDATE api_webhooks SET attempts = %s, next_attempt_at = now() + make_interval(secs => %s),"
                " last_error = coalesce(%s, last_error) WHERE detection_id = %s",
                (attempts, delay, error, detection_id),
            )

    def _finish(self, detection_id: str, state: str, error: str | None, attempts: int | None = None) -> None:
        with connect(self.url) as conn, mapped_errors():
            conn.execute(
                "UPDATE api_webhooks SET state = %s, last_error = %s, attempts = coalesce(%s, attempts),"
                " delivered_at = CASE WHEN %s = 'delivered' THEN now() END WHERE detection_id = %s",
                (state, error, attempts, state, detection_id),
            )


def list_webhooks(
    database_url: str, *, tenant: str | None = None, state: str | None = None
) -> list[dict[str, object]]:
    """Webhook rows, newest first (at most 1000): for `audioguard api webhooks list`."""
    with connect(database_url) as conn, mapped_errors():
        rows = conn.execute(
            "SELECT detection_id, tenant, url, state, attempts, last_error, created_at, delivered_at"
            " FROM api_webhooks WHERE (%s::text IS NULL OR tenant = %s) AND (%s::text IS NULL OR state = %s)"
            " ORDER BY created_at DESC LIMIT 1000",
            (tenant, tenant, state, state),
        ).fetchall()
    names = ("detection_id", "tenant", "url", "state", "attempts", "last_error", "created_at", "delivered_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


def retry_webhook(database_url: str, detection_id: str) -> bool:
    """Send a dead webhook again from attempt 1 (the replay of a dead one); False when there is
    no dead webhook with this detection id."""
    with connect(database_url) as conn, mapped_errors():
        cur = conn.execute(
            "UPDATE api_webhooks SET state = 'pending', attempts = 0, next_attempt_at = now(),"
            " created_at = now() WHERE detection_id = %s AND state = 'dead'",
            (detection_id,),
        )
        return cur.rowcount == 1
