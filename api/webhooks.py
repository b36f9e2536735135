"""Webhooks: a signed POST to the client's callback_url once its detection has a verdict.

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
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from api.detections import Detection, Detections
from services.database import connect, mapped_errors
from services.settings import ApiSettings
from services.store import VerdictStore

__all__ = [
    "CallbackRefused",
    "WebhookDispatcher",
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
    """A thread delivering due webhooks until `stop()`. `render(detection, verdict)` is the body."""

    LEASE_SECONDS = 60

    def __init__(
        self,
        database_url: str,
        detections: Detections,
        store: VerdictStore,
        settings: ApiSettings,
        render: Callable[[Detection, bytes], bytes],
    ) -> None:
        self.url = database_url
        self.detections = detections
        self.store = store
        self.settings = settings
        self.render = render
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
        if detection is None or verdict is None:
            if age > self.settings.webhook_verdict_timeout_seconds:
                self._finish(detection_id, "dead", "no_verdict: the detection has no verdict in time")
            else:
                self._reschedule(detection_id, attempts, self.settings.webhook_poll_seconds, None)
            return
        error = self._deliver(url, detection, verdict, attempts + 1)
        if error is None:
            self._finish(detection_id, "delivered", None, attempts + 1)
        elif attempts + 1 >= self.settings.webhook_max_attempts:
            log.warning("webhook for %s dead after %d attempts: %s", detection_id, attempts + 1, error)
            self._finish(detection_id, "dead", error, attempts + 1)
        else:
            backoff = min(
                self.settings.webhook_max_backoff_seconds,
                self.settings.webhook_initial_backoff_seconds * 2**attempts,
            )
            self._reschedule(detection_id, attempts + 1, backoff * random.uniform(0.5, 1.0), error)

    def _deliver(self, url: str, detection: Detection, verdict: bytes, attempt: int) -> str | None:
        """None when the receiver took it (2xx), else why not."""
        try:
            check_callback_url(url, allow_private=self.settings.webhook_allow_private_hosts)
        except CallbackRefused as refused:
            return f"{refused.code}: {refused.detail}"
        body = self.render(detection, verdict)
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
