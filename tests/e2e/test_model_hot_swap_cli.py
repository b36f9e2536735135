"""A real `audioguard worker --model models:/<name>@champion` process on the embedded broker:
`audioguard model promote` swaps it to the challenger without a restart, /readyz answers 200
throughout, and every upload gets exactly one verdict, those published after the swap from the
new version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.detector import default_artifact_dir
from services.local.emulators import free_port
from services.registry import FileRegistry
from tests.support.audio import write_clip
from tests.support.models import shipped_version

CLI = [sys.executable, "-m", "services.cli"]
NAME = "audioguard-lfb-cnn"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def test_promote_swaps_a_running_worker_process(broker, tenants, tmp_path: Path) -> None:
    tenant = tenants[0]
    registry = FileRegistry(tmp_path / "registry")
    registry.register(NAME, default_artifact_dir())
    registry.register(NAME, default_artifact_dir())
    registry.set_alias(NAME, "champion", 1, reason="e2e")
    registry.set_alias(NAME, "challenger", 2, reason="e2e")
    root = tmp_path / "storage"
    config = tmp_path / "audioguard.toml"
    config.write_text(f'[storage]\ntenant_file_roots = {{ "{tenant}" = ["{root / tenant}"] }}\n')
    port = free_port()
    env = dict(
        os.environ,
        AUDIOGUARD_CONFIG=str(config),
        AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        AUDIOGUARD_KAFKA__GROUP_ID=f"swap-{tenant}",
        AUDIOGUARD_STORE__URL=f"sqlite:///{tmp_path / 'v.db'}",
        AUDIOGUARD_REGISTRY__URI=str(tmp_path / "registry"),
        AUDIOGUARD_REGISTRY__POLL_SECONDS="0.5",
        AUDIOGUARD_TORCH_THREADS="1",
        AUDIOGUARD_ACTOR="e2e-test",
    )
    assert run("topics", "create", "--tenant", tenant, env=env).returncode == 0

    def publish(prefix: str) -> set[str]:
        clips = [write_clip(tmp_path / f"{prefix}-{i}.wav", seconds=1.5, seed=i) for i in range(3)]
        published = run("publish", "--tenant", tenant, *map(str, clips), env=env)
        assert published.returncode == 0, published.stderr
        return {json.loads(line)["idempotency_key"] for line in published.stdout.splitlines()}

    def verdicts() -> list[dict[str, object]]:
        out = run("verdicts", "--tenant", tenant, env=env)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wait_for(keys: set[str]) -> list[dict[str, object]]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = verdicts()
            if keys <= {str(v["idempotency_key"]) for v in seen}:
                return seen
            time.sleep(1)
        raise AssertionError(f"no verdicts for {keys - {str(v['idempotency_key']) for v in verdicts()}}")

    worker = subprocess.Popen(
        [
            *CLI,
            "worker",
            "--tenant",
            tenant,
            "--model",
            f"models:/{NAME}@champion",
            "--metrics-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        before = publish("before")
        wait_for(before)
        assert _ready(port)
        promoted = run("model", "promote", NAME, "--override", "--reason", "e2e hot swap", env=env)
        assert promoted.returncode == 0, promoted.stderr
        # the swap happens within a poll plus load time; readiness never drops meanwhile
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert _ready(port), "the worker stopped being ready during the swap"
            time.sleep(0.2)
        after = publish("after")
        seen = wait_for(before | after)
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]
    assert "model swapped" in err
    keys = [str(v["idempotency_key"]) for v in seen]
    assert sorted(keys) == sorted(before | after)  # one verdict each
    version = {str(v["idempotency_key"]): v["model"]["version"] for v in seen}  # type: ignore[index]
    assert {version[k] for k in before} == {f"{shipped_version()}+r1"}
    assert {version[k] for k in after} == {f"{shipped_version()}+r2"}
