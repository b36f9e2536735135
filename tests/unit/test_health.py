"""The health server over real HTTP on a free loopback port: /metrics, /healthz, /readyz."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from services import metrics
from services.health import HealthServer, Heartbeat, Readiness, start_health_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _get(server: HealthServer, path: str, method: str = "GET") -> tuple[int, bytes, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read(), error.headers.get("Content-Type", "")


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def heartbeat(clock: FakeClock) -> Heartbeat:
    return Heartbeat(max_age_seconds=10.0, clock=clock)


@pytest.fixture()
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture()
def server(heartbeat: Heartbeat, readiness: Readiness) -> Iterator[HealthServer]:
    running = start_health_server(0, ready=readiness, alive=heartbeat, host="127.0.0.1")
    try:
        yield running
    finally:
        running.stop()


def test_port_zero_picks_a_free_port(server: HealthServer) -> None:
    assert server.port > 0
    assert server.host == "127.0.0.1"


def test_healthz_follows_the_heartbeat(server: HealthServer, heartbeat: Heartbeat, clock: FakeClock) -> None:
    status, body, _ = _get(server, "/healthz")
    assert (status, body) == (503, b"stale\n"), "no beat yet must not count as alive"

    heartbeat.beat()
    assert _get(server, "/healthz")[:2] == (200, b"ok\n")

    clock.now += 9.5
    assert _get(server, "/healthz")[0] == 200
    clock.now += 1.0  # 10.5 s since the last beat, max age 10 s
    assert _get(server, "/healthz")[0] == 503
    heartbeat.beat()
    assert _get(server, "/healthz")[0] == 200


def test_heartbeat_sets_the_timestamp_gauge(heartbeat: Heartbeat) -> None:
    heartbeat.beat()
    value = REGISTRY.get_sample_value("audioguard_last_heartbeat_timestamp_seconds")
    assert value is not None and value > 1.7e9


def test_readyz_needs_model_warmup_and_transport(server: HealthServer, readiness: Readiness) -> None:
    status, body, _ = _get(server, "/readyz")
    assert status == 503
    assert b"model_loaded" in body and b"warmed_up" in body and b"transport_connected" in body

    readiness.set(model_loaded=True, warmed_up=True)
    status, body, _ = _get(server, "/readyz")
    assert status == 503 and b"transport_connected" in body and b"model_loaded" not in body

    readiness.set(transport_connected=True)
    assert _get(server, "/readyz")[:2] == (200, b"ready\n")
    assert REGISTRY.get_sample_value("audioguard_ready") == 1.0

    readiness.set(draining=True)
    status, body, _ = _get(server, "/readyz")
    assert status == 503 and b"not_draining" in body
    assert REGISTRY.get_sample_value("audioguard_ready") == 0.0


def test_metrics_serves_the_exposition_format(server: HealthServer, readiness: Readiness) -> None:
    metrics.EVENTS_CONSUMED.labels(tenant="health-test").inc(3)
    readiness.set(model_loaded=True, warmed_up=True, transport_connected=True)
    status, body, content_type = _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert 'audioguard_events_consumed_total{tenant="health-test"} 3.0' in text
    # readiness is refreshed on every scrape, so WorkerNotReady sees the current state
    assert "\naudioguard_ready 1.0\n" in text


def test_head_answers_without_a_body(server: HealthServer, heartbeat: Heartbeat) -> None:
    heartbeat.beat()
    status, body, _ = _get(server, "/healthz", method="HEAD")
    assert (status, body) == (200, b"")


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert _get(server, "/nope")[0] == 404


def test_a_check_that_raises_counts_as_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("detector exploded")

    running = start_health_server(0, ready=broken, alive=broken, host="127.0.0.1")
    try:
        assert _get(running, "/readyz")[0] == 503
        assert _get(running, "/healthz")[0] == 503
        assert _get(running, "/metrics")[0] == 200
    finally:
        running.stop()


def test_plain_callables_are_accepted() -> None:
    with start_health_server(0, ready=lambda: True, alive=lambda: True, host="127.0.0.1") as running:
        assert _get(running, "/readyz")[:2] == (200, b"ready\n")
        assert _get(running, "/healthz")[0] == 200


def test_stop_releases_the_port() -> None:
    running = start_health_server(0, ready=lambda: True, alive=lambda: True, host="127.0.0.1")
    port = running.port
    running.stop()
    running.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    again = start_health_server(port, ready=lambda: True, alive=lambda: True, host="127.0.0.1")
    try:
        assert again.port == port
    finally:
        again.stop()


def test_heartbeat_rejects_a_non_positive_age() -> None:
    with pytest.raises(ValueError):
        Heartbeat(max_age_seconds=0)
