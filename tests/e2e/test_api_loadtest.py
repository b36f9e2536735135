"""`audioguard loadtest api` at CI size: locust drives upload+wait through a real API process and
a real worker process; every answer in a short phase at low concurrency is a 200 with a verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_loadtest_api_smoke(postgres_url: str, redis_url: str) -> None:
    env = {**os.environ, "AUDIOGUARD_DATABASE__URL": postgres_url}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "loadtest",
            "api",
            "--users",
            "2",
            "--seconds",
            "3",
            "--store-url",
            redis_url,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert row["users"] == 2 and row["requests"] > 0
    assert row["ok_200"] == row["requests"], row  # far below the breaking point: all answered in time
