"""`audioguard demo --transport pubsub` end to end: it starts Google's Pub/Sub emulator
itself, provisions three tenants, runs a worker and must account for every event."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("gcloud") is None, reason="needs the gcloud SDK's Pub/Sub emulator"
)


def test_the_pubsub_demo_accounts_for_every_event() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOGUARD_", "PUBSUB_EMULATOR"))}
    env["AUDIOGUARD_DEVICE"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--transport", "pubsub", "--timeout", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Pub/Sub emulator" in output
    assert "audioguard demo summary (pubsub)" in output
    # the two bad events are dead-lettered with their reasons, the rest get verdicts
    assert "malformed_json" in output and "uri_outside_roots" in output
    assert "got neither a verdict nor a dead letter" not in output
