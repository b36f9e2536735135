"""Webhooks over real HTTP: a receiver on loopback verifies the signature; a receiver that is
down gets every retry and then the webhook is dead-lettered (state dead, with the last error).

The verdict is written into the API's verdict store as the worker would (put_if_absent under the
pipeline key); tests/e2e/test_api_e2e.py runs the real worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest

from api.keys import ApiKeys
from consumers.tenancy import kafka_topic
from consumers.transports.memory import memory_broker, provision_memory, read_memory_topic
from services.settings import ApiSettings, DatabaseSettings, MemorySettings, Settings, StorageSettings
from tests.support.api_server import RunningApi, free_port
from tests.support.audio import encode, speechlike
from tests.support.reporting import store_dead_letter


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """The receiver's side, as docs/api.md shows it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp, signature = int(fields["t"]), fields["v1"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature) and abs(time.time() - timestamp) <= tolerance


class Receiver:
    def __init__(self, status: int = 204) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.deliveries.append((dict(self.headers.items()), body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_env(postgres_url: str, tenants: list[str], tmp_path: Path):
    tenant = tenants[0]
    settings = Settings(
        transport="memory",
        tenants=[tenant],
        memory=MemorySettings(broker=f"hooks-{uuid.uuid4().hex[:8]}"),
        storage=StorageSettings(tenant_file_roots={tenant: [tmp_path / tenant]}),
        database=DatabaseSettings(url=postgres_url),
        api=ApiSettings(
            webhook_allow_private_hosts=True,
            webhook_poll_seconds=0.05,
            webhook_initial_backoff_seconds=0.05,
            webhook_max_backoff_seconds=0.2,
            webhook_max_attempts=3,
            webhook_timeout_seconds=2,
        ),
    )
    provision_memory(settings, [tenant])
    with RunningApi(settings) as running:
        yield settings, running, ApiKeys(postgres_url).create(tenant, "hooks")


def _post(running: RunningApi, token: str, callback: str) -> dict:
    with httpx.Client(base_url=running.url, timeout=20) as client:
        answer = client.post(
            "/v1/detections",
            files={"file": ("c.wav", encode(speechlike(1.0, seed=3)), "audio/wav")},
            data={"callback_url": callback},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 202, answer.text
    return answer.json()


def _worker_writes_verdict(running: RunningApi, tenant: str, detection_id: str) -> dict:
    verdict = {"tenant_id": tenant, "label": "bona_fide", "score": 0.1}
    row = running.context.detections.get(tenant, detection_id)
    assert row is not None
    running.context.store.put_if_absent(tenant, row.idempotency_key, json.dumps(verdict).encode())
    return verdict


def _webhook_row(url: str, detection_id: str) -> tuple:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT state, attempts, last_error FROM api_webhooks WHERE detection_id = %s", (detection_id,)
        ).fetchone()
    assert row is not None
    return row


def _until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_signed_webhook_reaches_the_receiver_once_the_verdict_is_in(hook_env) -> None:
    settings, running, issued = hook_env
    tenant = settings.tenants[0]
    with Receiver() as receiver:
        body = _post(running, issued.token, receiver.url)
        time.sleep(0.3)
        assert receiver.deliveries == []  # no verdict yet: nothing is sent
        verdict = _worker_writes_verdict(running, tenant, body["id"])
        assert _until(lambda: len(receiver.deliveries) == 1)
        headers, raw = receiver.deliveries[0]
        assert verify(issued.webhook_secret, headers["AudioGuard-Signature"], raw)
        assert not verify(issued.webhook_secret, headers["AudioGuard-Signature"], raw + b" ")
        sent = json.loads(raw)
        assert sent["type"] == "detection.completed"
        assert sent["detection"]["id"] == body["id"] and sent["detection"]["verdict"] == verdict
        assert headers["AudioGuard-Delivery"] == body["id"]
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "delivered")
        time.sleep(0.3)
        assert len(receiver.deliveries) == 1


def test_a_receiver_that_is_down_gets_the_retries_then_the_webhook_is_dead(hook_env) -> None:
    settings, running, issued = hook_env
    tenant = settings.tenants[0]
    with Receiver(status=503) as failing:
        body = _post(running, issued.token, failing.url)
        _worker_writes_verdict(running, tenant, body["id"])
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "dead")
        assert len(failing.deliveries) == settings.api.webhook_max_attempts
        assert [h["AudioGuard-Attempt"] for h, _ in failing.deliveries] == ["1", "2", "3"]
    state, attempts, error = _webhook_row(settings.database.url, body["id"])
    assert (state, attempts, error) == ("dead", 3, "receiver answered 503")

    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    body = _post(running, issued.token, closed)
    _worker_writes_verdict(running, tenant, body["id"])
    assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "dead")
    assert "ConnectError" in _webhook_row(settings.database.url, body["id"])[2]


def test_a_callback_url_that_is_not_http_is_refused_at_once(hook_env) -> None:
    _, running, issued = hook_env
    with httpx.Client(base_url=running.url, timeout=20) as client:
        answer = client.post(
            "/v1/detections",
            files={"file": ("c.wav", encode(speechlike(1.0, seed=4)), "audio/wav")},
            data={"callback_url": "gopher://127.0.0.1:70/x"},
            headers={"Authorization": f"Bearer {issued.token}"},
        )
    assert (answer.status_code, answer.json()["code"]) == (422, "unsupported_callback_scheme")


def test_a_dead_webhook_is_listed_and_sent_again_by_the_cli(hook_env, monkeypatch, capsys) -> None:
    from services.cli import main

    settings, running, issued = hook_env
    monkeypatch.setenv("AUDIOGUARD_DATABASE__URL", settings.database.url)
    with Receiver(status=500) as receiver:
        body = _post(running, issued.token, receiver.url)
        _worker_writes_verdict(running, settings.tenants[0], body["id"])
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "dead")
        capsys.readouterr()
        assert main(["api", "webhooks", "list", "--state", "dead", "--json"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(r["detection_id"], r["attempts"]) for r in listed] == [(body["id"], 3)]
        receiver.status = 204  # the receiver is fixed
        assert main(["api", "webhooks", "retry", body["id"]]) == 0
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "delivered")
        assert len(receiver.deliveries) == 4
        assert main(["api", "webhooks", "retry", body["id"]]) == 1  # only a dead one can be retried


def test_a_dead_webhook_is_a_dead_letter_that_dlq_replay_sends_again(hook_env, monkeypatch, capsys) -> None:
    from services.cli import main

    settings, running, issued = hook_env
    tenant = settings.tenants[0]
    for name, value in {
        "AUDIOGUARD_DATABASE__URL": settings.database.url,
        "AUDIOGUARD_TRANSPORT": "memory",
        "AUDIOGUARD_MEMORY__BROKER": settings.memory.broker,
    }.items():
        monkeypatch.setenv(name, value)
    with Receiver(status=500) as receiver:
        body = _post(running, issued.token, receiver.url)
        _worker_writes_verdict(running, tenant, body["id"])
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "dead")
        capsys.readouterr()
        listed: list[dict] = []

        def dead_lettered() -> bool:
            assert main(["dlq", "list", "--tenant", tenant, "--json"]) == 0
            listed[:] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
            return bool(listed)

        assert _until(dead_lettered, timeout=10)
        assert len(listed) == 1, listed
        letter = listed[0]
        text = json.dumps(letter)
        assert "webhook_failed" in text and "retries_exhausted" in text and body["id"] in text

        assert main(["dlq", "replay", "--tenant", tenant, "--dry-run"]) == 0
        assert "-> the API's webhook queue" in capsys.readouterr().out
        receiver.status = 204  # the receiver is fixed; the letter is replayed with the dlq tool
        assert main(["dlq", "replay", "--tenant", tenant, "--operator", "test", "--json"]) == 0
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "delivered")
        assert len(receiver.deliveries) == 4
        capsys.readouterr()
        assert main(["dlq", "list", "--tenant", tenant, "--json"]) == 0
        assert capsys.readouterr().out.strip() == ""  # replayed and removed, not republished
    # nothing was republished to the arrivals as if it were audio: only the upload's arrival is there
    arrivals = list(read_memory_topic(memory_broker(settings.memory.broker), kafka_topic("arrivals", tenant)))
    assert len(arrivals) == 1


def test_a_failed_detection_sends_a_detection_failed_webhook(hook_env) -> None:
    from reporting.store import migrate_store

    settings, running, issued = hook_env
    tenant = settings.tenants[0]
    migrate_store(settings.database.url)
    with Receiver() as receiver:
        body = _post(running, issued.token, receiver.url)
        [(key, value, _headers)] = list(
            read_memory_topic(memory_broker(settings.memory.broker), kafka_topic("arrivals", tenant))
        )
        store_dead_letter(settings.database.url, tenant, value, key, "undecodable_audio", 0)
        assert _until(lambda: _webhook_row(settings.database.url, body["id"])[0] == "delivered")
    [(headers, raw)] = receiver.deliveries
    assert verify(issued.webhook_secret, headers["AudioGuard-Signature"], raw)
    sent = json.loads(raw)
    assert sent["type"] == "detection.failed" and sent["detection"]["status"] == "failed"
    assert sent["detection"]["failure"]["reason"] == "undecodable_audio"
