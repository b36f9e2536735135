"""`audioguard demo --api`: the demo also shows one detection over HTTP, end to end."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_with_api_shows_one_http_detection_with_its_verdict(postgres_url: str) -> None:
    env = {**os.environ, "AUDIOGUARD_DATABASE__URL": postgres_url, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--transport", "memory", "--api"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("api POST /v1/detections"))
    assert "-> 200 done label=" in line, line


def test_demo_with_api_but_no_database_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AUDIOGUARD_DATABASE__URL"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--transport", "memory", "--api"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2 and "AUDIOGUARD_DATABASE__URL" in done.stderr
