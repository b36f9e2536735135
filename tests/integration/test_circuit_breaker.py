"""The dead-letter circuit breaker with real `audioguard worker` processes on the real broker:
a poison flood (a bad deploy upstream) stops the worker with a clear error and exit 3 instead
of dead-lettering all traffic; what it did not ack is delivered again after the restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, committed_offsets
from tests.support.pipeline import make_settings, provision, publish_clips, publish_raw, read_destination


def worker_env(settings, audio_root: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env.pop("AUDIOGUARD_CONFIG", None)
    env.update(
        {
            "AUDIOGUARD_TENANTS": json.dumps(settings.tenants),
            "AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "AUDIOGUARD_KAFKA__GROUP_ID": settings.kafka.group_id,
            "AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS": json.dumps(
                {t: [str(audio_root / t)] for t in settings.tenants}
            ),
            "AUDIOGUARD_DEVICE": "cpu",
            "AUDIOGUARD_LOG_LEVEL": "WARNING",
            "AUDIOGUARD_DRAIN_SECONDS": "5",
        }
    )
    env.update(extra)
    return env


def run_worker(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_poison_flood_trips_the_breaker_exit_3_then_nothing_is_lost(broker, tenants, audio_root):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    good = publish_clips(settings, tenant, audio_root, 3, seconds=1.0)
    flood = [f"{tenant}:bad-{i}" for i in range(30)]
    publish_raw(
        KafkaSink(settings.kafka),
        [
            OutRecord(tenant=tenant, destination="arrivals", key=k.encode(), value=b'{"broken": ')
            for k in flood
        ],
    )

    tight = worker_env(settings, audio_root, AUDIOGUARD_DLQ__MAX_CONSECUTIVE="5")
    first = run_worker(tight, timeout=120)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "dlq_circuit_open" in first.stderr and "dead letters in a row" in first.stderr
    assert "malformed_json" in first.stderr  # the message names the most common reason

    # The breaker is checked before a dead letter is published: at most 5 went out.
    assert len(read_destination(settings, tenant, "dlq", idle=1.0)) <= 5
    committed = committed_offsets(settings.kafka, [kafka_topic("arrivals", tenant)])
    assert max(committed.values()) <= len(good) + 5  # never past what was finished

    # A second start with the same policy trips again: it does not "leak" the flood.
    again = run_worker(tight, timeout=120)
    assert again.returncode == 3

    # After the fix (here: an operator raising the limit), every arrival gets its outcome.
    relaxed = worker_env(
        settings,
        audio_root,
        AUDIOGUARD_DLQ__MAX_CONSECUTIVE="1000",
        AUDIOGUARD_DLQ__MAX_INVALID_RATIO="1.0",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker"], env=relaxed, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            offsets = committed_offsets(settings.kafka, [kafka_topic("arrivals", tenant)])
            if max(offsets.values()) >= len(good) + len(flood):
                break
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0
    dead_keys = {(k or b"").decode() for k, _v, _h in read_destination(settings, tenant, "dlq")}
    assert dead_keys == set(flood)
    verdict_keys = {(k or b"").decode() for k, _v, _h in read_destination(settings, tenant)}
    assert verdict_keys == set(good)


def test_a_healthy_stream_with_scattered_poison_does_not_trip(broker, tenants, audio_root):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    sink = KafkaSink(settings.kafka)
    keys = []
    for i in range(4):
        keys += publish_clips(settings, tenant, audio_root, 5, seed=10 * i, seconds=0.5)
        bad = f"{tenant}:bad-{i}"
        publish_raw(sink, [OutRecord(tenant=tenant, destination="arrivals", key=bad.encode(), value=b"{")])
    env = worker_env(
        settings, audio_root, AUDIOGUARD_DLQ__MAX_CONSECUTIVE="5", AUDIOGUARD_DLQ__MAX_INVALID_RATIO="0.3"
    )
    log = audio_root / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker"],
        env=env,
        stderr=log.open("w"),
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            offsets = committed_offsets(settings.kafka, [kafka_topic("arrivals", tenant)])
            if max(offsets.values()) >= 24:
                break
            time.sleep(1)
        assert proc.poll() is None, log.read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0
    assert len(read_destination(settings, tenant, "dlq")) == 4
