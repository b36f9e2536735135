"""`audioguard demo --transport kinesis` end to end: it starts moto_server itself (Kinesis,
and S3 where the audio is stored), provisions three tenants, runs a worker and must
account for every event."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_kinesis_demo_accounts_for_every_event() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOGUARD_")}
    env["AUDIOGUARD_DEVICE"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--transport", "kinesis", "--timeout", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "moto_server (Kinesis + S3)" in output
    assert "audioguard demo summary (kinesis)" in output
    # the two bad events are dead-lettered with their reasons, the rest get verdicts
    assert "malformed_json" in output and "uri_outside_roots" in output
    assert "got neither a verdict nor a dead letter" not in output
