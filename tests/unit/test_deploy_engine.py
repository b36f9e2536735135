"""The deployment checks that need a container engine: skipped here (no engine on the
development machines or CI), run unchanged on a machine with Docker.

- `docker compose config` accepts docker-compose.yml (the engine's own parser, beyond the
  JSON Schema check in test_deploy_compose.py);
- the CPU image builds, runs as uid 10001, loads and verifies the baked model, and answers
  `audioguard --help`; its size is printed (a benchmark-style number, never asserted).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "audioguard-worker:deploy-test"


def _engine() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_engine = pytest.mark.skipif(not _engine(), reason="no container engine reachable")


@needs_engine
def test_docker_compose_accepts_the_file() -> None:
    proc = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr


@needs_engine
@pytest.mark.slow
def test_cpu_image_builds_runs_as_non_root_and_verifies_the_model() -> None:
    build = subprocess.run(
        ["docker", "build", "--build-arg", "VARIANT=cpu", "--target", "worker", "-t", IMAGE, "."],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert build.returncode == 0, build.stderr[-3000:]

    def run(*args: str) -> str:
        proc = subprocess.run(["docker", "run", "--rm", *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    assert run("--entrypoint", "id", IMAGE, "-u").strip() == "10001"
    assert "worker" in run(IMAGE, "--help")
    verify = "from services.detector import load_detector; print(load_detector(device='cpu').meta.name)"
    assert run("--entrypoint", "python3", IMAGE, "-c", verify).strip()
    size = subprocess.run(
        ["docker", "image", "inspect", IMAGE, "--format", "{{.Size}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(f"CPU image size: {int(size.stdout.strip()) / 1e9:.2f} GB")
