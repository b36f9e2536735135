"""Crash-loop quarantine with a decoder that really crashes the process, on the real broker.

One partition holds six good arrivals, one whose audio segfaults the decoder
(`tests.support.crashing_worker`), and six more good ones, with a durable SQLite verdict store.
Each run is a fresh worker process:

1. the poison segfaults the first worker (exit -11) with its neighbours in flight;
2. the restart runs every message that was in flight at the crash alone, one at a time: the
   innocent ones finish, the poison segfaults the worker again, alone (exit -11);
3. the next restart dead-letters the poison as `crashed_worker` (attempt 3) without decoding it
   again, and answers everyone else: one verdict per key, no innocent neighbour dead-lettered.

    .venv/bin/python -m pytest -s tests/integration/test_crash_quarantine.py
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, committed_offsets
from dlq.envelope import dead_letter_from_record
from services.platform import arrival_for
from tests.integration.test_circuit_breaker import worker_env
from tests.support.crashing_worker import CRASH_MAGIC
from tests.support.pipeline import (
    make_settings,
    provision,
    publish_clips,
    publish_raw,
    read_destination,
    verdicts_by_key,
)

ROOT = Path(__file__).resolve().parents[2]


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.crashing_worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _log_events(log: Path, message: str) -> list[dict[str, object]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("message") == message:
            events.append(event)
    return events


def test_a_message_that_crashes_the_worker_is_quarantined_and_its_neighbours_answered(
    broker, tenants, audio_root, tmp_path
):
    tenant = tenants[0]
    store = tmp_path / "verdicts.db"
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root, store_url=f"sqlite:///{store}")
    provision(settings, partitions=1)
    before = publish_clips(settings, tenant, audio_root, 6, seed=0, seconds=1.0)
    data = CRASH_MAGIC + hashlib.sha256(b"not audio").digest() * 64
    path = audio_root / tenant / "poison.wav"
    path.write_bytes(data)
    poison = f"{tenant}:poison"
    publish_raw(
        KafkaSink(settings.kafka),
        [
            OutRecord(
                tenant=tenant,
                destination="arrivals",
                key=poison.encode(),
                value=arrival_for(tenant, f"file://{path}", data, key=poison, content_id="poison"),
            )
        ],
    )
    after = publish_clips(settings, tenant, audio_root, 6, seed=100, seconds=1.0)
    innocent = before + after
    env = worker_env(
        settings,
        audio_root,
        AUDIOGUARD_STORE__URL=f"sqlite:///{store}",
        AUDIOGUARD_WORKER_ID="crash-loop-worker",
        AUDIOGUARD_FETCH_THREADS="4",
    )
    logs = [tmp_path / f"worker-{run}.log" for run in (1, 2, 3)]

    # runs 1 and 2: the poison kills the worker, first among its neighbours, then alone
    for log in logs[:2]:
        proc = _start(env, log)
        try:
            code = proc.wait(240)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert code == -signal.SIGSEGV, log.read_text(errors="replace")[-3000:]

    isolated = [
        e.get("idempotency_key")
        for e in _log_events(logs[1], "running a suspect alone: it was in progress when a worker died")
    ]
    assert poison in isolated  # the restart ran the poison alone, and it crashed alone
    assert not _log_events(logs[1], "quarantined: this message was in progress each time a worker died")

    # run 3: quarantined without being decoded, everyone else answered
    proc = _start(env, logs[2])
    try:
        deadline = time.monotonic() + 240
        topic = kafka_topic("arrivals", tenant)
        while time.monotonic() < deadline and proc.poll() is None:
            offsets = committed_offsets(settings.kafka, [topic])
            if sum(max(0, o) for o in offsets.values()) >= len(innocent) + 1:
                break
            time.sleep(0.5)
        assert proc.poll() is None, logs[2].read_text(errors="replace")[-3000:]  # not crashed again
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, logs[2].read_text(errors="replace")[-3000:]

    dead = []
    for _key, value, headers in read_destination(settings, tenant, "dlq", idle=1.0):
        envelope, payload = dead_letter_from_record(value, headers)
        dead.append((json.loads(payload)["idempotency_key"], envelope))
    assert [key for key, _ in dead] == [poison], [(k, e.reason) for k, e in dead]
    [(_, envelope)] = dead
    assert (envelope.reason, envelope.category, envelope.attempt) == ("crashed_worker", "poison", 3)
    assert "2 time(s)" in envelope.error_message

    verdicts = verdicts_by_key(settings, tenant)
    assert set(verdicts) == set(innocent)
    # one answer per upload: a verdict republished after a crash is the stored one, byte for byte
    assert all(len({json.dumps(v, sort_keys=True) for v in vs}) == 1 for vs in verdicts.values())
    print(
        f"\ncrash loop: runs exited -11, -11, 0; run 2 ran {len(isolated)} suspect(s) alone; "
        f"{len(innocent)} innocent arrivals -> {len(verdicts)} keys with one distinct verdict "
        f"({sum(len(v) for v in verdicts.values())} records); dead letter: {poison} crashed_worker, attempt 3"
    )
