"""A worker started before its stream is reachable waits for it: alive, not ready, one
structured warning per attempt, and ready once `moto_server` answers on that port; SIGTERM while
waiting is a clean stop (exit 0). Before, it died at start with a RetryableError traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from consumers.transports.kinesis import provision_kinesis
from services.local.emulators import MotoServer, free_port
from services.settings import Settings
from tests.integration.test_worker_processes import _get, _wait

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
WAITING = "a dependency is not reachable at start; retrying"


def _warnings(log: Path) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("message") == WAITING]


def _start(
    tmp_path: Path, endpoint: str, metrics_port: int, name: str
) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOGUARD_")}
    env.update(AWS)
    env.update(
        {
            "AUDIOGUARD_TRANSPORT": "kinesis",
            "AUDIOGUARD_TENANTS": '["acme"]',
            "AUDIOGUARD_KINESIS__ENDPOINT_URL": endpoint,
            "AUDIOGUARD_STORE__URL": f"sqlite:///{tmp_path / 'verdicts.db'}",
            "AUDIOGUARD_DEVICE": "cpu",
            "AUDIOGUARD_LOG_LEVEL": "WARNING",
        }
    )
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "worker",
                "--scorer",
                "null",
                "--metrics-port",
                str(metrics_port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def test_a_worker_waits_for_a_stream_that_is_not_up_yet_then_serves(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc, log = _start(tmp_path, endpoint, metrics, "worker")
    server = None
    try:
        _wait(lambda: len(_warnings(log)) >= 2, 60, proc, log)
        first = _warnings(log)[0]
        assert first["reason"] == "unavailable" and first["attempt"] == 1, first
        assert _get(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n")
        ready = _get(f"http://127.0.0.1:{metrics}/readyz")
        assert ready is not None and ready[0] == 503 and "transport_connected" in ready[1], ready

        server = MotoServer(port=port).start()
        settings = Settings(transport="kinesis", tenants=["acme"], kinesis={"endpoint_url": endpoint})
        os.environ.update(AWS)
        provision_kinesis(settings, ["acme"])
        _wait(lambda: (_get(f"http://127.0.0.1:{metrics}/readyz") or (0,))[0] == 200, 90, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        if server is not None:
            server.stop()
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_sigterm_while_waiting_for_the_stream_is_a_clean_stop(tmp_path: Path) -> None:
    proc, log = _start(tmp_path, f"http://127.0.0.1:{free_port()}", free_port(), "stopped")
    try:
        _wait(lambda: len(_warnings(log)) >= 1, 60, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "stopped before its transport or store was reachable" in text
    assert "Traceback" not in text
