"""The worker's small HTTP face: /metrics, /healthz and /readyz on ``settings.metrics_port``.

    GET /metrics   Prometheus exposition of the default registry (see services.metrics)
    GET /healthz   200 while the process loop is alive (its heartbeat is fresh), else 503:
                   the orchestrator restarts a worker whose loop is stuck
    GET /readyz    200 only when the readiness callable says the model is loaded and warm
                   and the transport is connected, else 503: traffic and rollouts wait

The runner owns a `Heartbeat` (it calls `beat()` once per loop turn) and a `Readiness`
(it sets the three flags as they become true); both are plain callables, so the server
needs nothing else from the worker. The server runs on a daemon thread of the standard
library's ThreadingHTTPServer.

This module must never block the process loop, never import torch or an SDK, and never
answer a probe by raising: a callable that fails counts as "no".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from services import metrics

__all__ = ["HealthServer", "Heartbeat", "Readiness", "start_health_server"]

log = logging.getLogger(__name__)


class Heartbeat:
    """Liveness from a timestamp the process loop refreshes.

    `beat()` is cheap (a clock read and a gauge set) and safe from any thread; calling the
    object answers whether the last beat is younger than `max_age_seconds`.
    """

    def __init__(self, max_age_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive")
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._last: float | None = None

    def beat(self) -> None:
        self._last = self._clock()
        metrics.LAST_HEARTBEAT.set(time.time())

    def age(self) -> float | None:
        """Seconds since the last beat, or None before the first one."""
        return None if self._last is None else self._clock() - self._last

    def __call__(self) -> bool:
        age = self.age()
        return age is not None and age <= self.max_age_seconds


@dataclass
class Readiness:
    """Ready when the model is loaded, warmed up and the transport is connected.

    Each flag is set by whoever owns that part (detector, runner); `draining` turns
    readiness off during a graceful shutdown while liveness stays on.
    """

    model_loaded: bool = False
    warmed_up: bool = False
    transport_connected: bool = False
    draining: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set(
        self,
        *,
        model_loaded: bool | None = None,
        warmed_up: bool | None = None,
        transport_connected: bool | None = None,
        draining: bool | None = None,
    ) -> None:
        with self._lock:
            if model_loaded is not None:
                self.model_loaded = model_loaded
            if warmed_up is not None:
                self.warmed_up = warmed_up
            if transport_connected is not None:
                self.transport_connected = transport_connected
            if draining is not None:
                self.draining = draining

    def missing(self) -> list[str]:
        """What is still not ready, for the /readyz body."""
        with self._lock:
            flags = {
                "model_loaded": self.model_loaded,
                "warmed_up": self.warmed_up,
                "transport_connected": self.transport_connected,
                "not_draining": not self.draining,
            }
        return [name for name, ok in flags.items() if not ok]

    def __call__(self) -> bool:
        return not self.missing()


def _ask(check: Callable[[], bool], name: str) -> bool:
    try:
        return bool(check())
    except Exception:
        # A probe that raises would give the orchestrator a 500 and us no clue: log it, say no.
        log.exception("%s check failed", name)
        return False


class HealthServer:
    """A running health/metrics server; `stop()` shuts it down and joins its thread."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(
    ready: Callable[[], bool], alive: Callable[[], bool], registry: CollectorRegistry
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "audioguard-health"

        def do_GET(self) -> None:  # the name http.server dispatches to
            self._respond(with_body=True)

        def do_HEAD(self) -> None:
            self._respond(with_body=False)

        def _respond(self, *, with_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                metrics.READY.set(1 if _ask(ready, "readiness") else 0)
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST, with_body)
            elif path == "/healthz":
                ok = _ask(alive, "liveness")
                self._send(200 if ok else 503, b"ok\n" if ok else b"stale\n", "text/plain", with_body)
            elif path == "/readyz":
                ok = _ask(ready, "readiness")
                metrics.READY.set(1 if ok else 0)
                body = b"ready\n"
                if not ok:
                    missing = ready.missing() if isinstance(ready, Readiness) else ["ready"]
                    body = ("not ready: " + ", ".join(missing) + "\n").encode()
                self._send(200 if ok else 503, body, "text/plain", with_body)
            else:
                self._send(404, b"not found\n", "text/plain", with_body)

        def _send(self, status: int, body: bytes, content_type: str, with_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes arrive every few seconds; access lines would drown the worker's own logs.
            log.debug("health %s - " + format, self.address_string(), *args)

    return Handler


def start_health_server(
    port: int,
    *,
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
) -> HealthServer:
    """Serve /metrics, /healthz and /readyz on `host:port` (0 = a free port) in a daemon thread.

    Returns at once with the server listening; raises OSError when the port is taken.
    """
    server = ThreadingHTTPServer((host, port), _handler(ready, alive, registry))
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="audioguard-health", daemon=True
    )
    thread.start()
    log.info("health server listening", extra={"port": server.server_address[1]})
    return HealthServer(server, thread)
