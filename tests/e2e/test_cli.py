"""The command line as a platform and an operator use it: real processes, real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.audio import write_clip

CLI = [sys.executable, "-m", "services.cli"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["broker"],
        ["topics", "create"],
        ["publish"],
        ["worker"],
        ["verdicts"],
        ["demo"],
        ["model"],
        ["model", "register"],
        ["model", "promote"],
        ["model", "rollback"],
        ["model", "gate"],
        ["model", "export-onnx"],
    ],
)
def test_every_command_explains_itself(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: audioguard" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def test_publish_worker_verdicts_with_settings_from_env_and_file(broker, tenants, tmp_path: Path):
    tenant = tenants[0]
    root = tmp_path / "storage"
    config = tmp_path / "audioguard.toml"
    # the config file holds storage; the environment holds the broker and the group
    config.write_text(f'[storage]\ntenant_file_roots = {{ "{tenant}" = ["{root / tenant}"] }}\n')
    env = dict(
        os.environ,
        AUDIOGUARD_CONFIG=str(config),
        AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        AUDIOGUARD_KAFKA__GROUP_ID=f"cli-{tenant}",
        AUDIOGUARD_STORE__URL=f"sqlite:///{tmp_path / 'v.db'}",
        AUDIOGUARD_LOG_FORMAT="json",
    )
    assert run("topics", "create", "--tenant", tenant, env=env).returncode == 0
    clips = [write_clip(tmp_path / f"in-{i}.wav", seconds=1.5, seed=i) for i in range(3)]
    published = run("publish", "--tenant", tenant, *map(str, clips), env=env)
    assert published.returncode == 0, published.stderr
    keys = {json.loads(line)["idempotency_key"] for line in published.stdout.splitlines()}
    assert len(keys) == 3

    worker = subprocess.Popen(
        [*CLI, "worker", "--tenant", tenant],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != keys:
            out = run("verdicts", "--tenant", tenant, env=env)
            seen = {json.loads(line)["idempotency_key"] for line in out.stdout.splitlines() if line.strip()}
            time.sleep(1)
        assert seen == keys
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]


def test_worker_refuses_a_model_whose_checksum_does_not_match(tmp_path: Path):
    from services.detector import default_artifact_dir

    broken = tmp_path / "model"
    broken.mkdir()
    for item in default_artifact_dir().iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = next(p for p in broken.iterdir() if p.suffix == ".pt")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the weights
    weights.write_bytes(bytes(data))
    env = dict(os.environ, AUDIOGUARD_MODEL_PATH=str(broken))
    result = run("worker", "--tenant", "acme", env=env, timeout=60)
    assert result.returncode == 3
    assert "checksum" in result.stderr
