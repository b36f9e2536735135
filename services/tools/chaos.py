"""`audioguard chaos`: the crash test. Real broker, real worker processes, SIGKILL at random.

    audioguard chaos --arrivals 5000 --kills 10 --mode both

For each mode (at-least-once, exactly-once) it starts the embedded broker (or uses
--bootstrap-servers), creates three tenants, stores a few very short clips and publishes
M arrivals over the tenants (a small share of them deliberately poison, so dead letters
are part of the accounting). Then it runs `audioguard worker` as a subprocess, SIGKILLs
it K times at random moments and restarts it each time (same worker id, one shared
SQLite or Redis verdict store), lets the last one finish, stops it with SIGTERM and reads
every verdict and dead-letter topic back with a `read_committed` reader:

    lost                    arrivals with neither a verdict nor a dead letter (must be 0)
    keys >1 distinct verdict  idempotency keys answered with two different verdicts (must be 0)
    duplicate verdicts      verdict records beyond the first per key (counted in
                            at-least-once mode; 0 in exactly-once mode)
    same, read_uncommitted  the duplicates a reader ignoring transactions would see: in
                            exactly-once mode, the records of rounds a kill aborted

Exit status 0 when the invariants hold (lost 0, one distinct verdict per key, and in
exactly-once mode no duplicate), 1 otherwise. The worker's CPU cost is kept small on
purpose (half-second clips from a small pool), so the run measures delivery, not scoring.

This module drives processes and reads topics through `consumers.transports.kafka`; it never imports
a Kafka client itself and never touches a broker it did not start unless told to.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ChaosResult", "run_chaos"]

#: every Nth arrival is poison (malformed JSON or a missing object): dead letters count too
POISON_EVERY = 97


@dataclass
class ChaosResult:
    mode: str
    arrivals: int
    kills: int
    verdict_keys: int = 0
    dead_lettered: int = 0
    lost: int = 0
    conflicting: int = 0
    duplicate_records: int = 0
    dlq_duplicates: int = 0
    #: duplicates a read_uncommitted reader sees (records of aborted transactions included)
    uncommitted_duplicates: int = 0
    #: exactly-once mode: does the broker abort a crashed worker's open transaction when the
    #: restarted worker re-registers its transactional id? (Kafka: yes; Tansu: no, it commits it)
    broker_aborts_fenced: bool | None = None
    restarts: int = 0
    seconds: float = 0.0
    lost_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Lost 0 and one distinct verdict per key; in exactly-once mode also no duplicate,
        where the broker keeps its side of the bargain (aborts a fenced transaction)."""
        clean = self.lost == 0 and self.conflicting == 0
        if self.mode != "exactly-once" or self.broker_aborts_fenced is False:
            return clean
        return clean and self.duplicate_records == 0


def format_table(results: list[ChaosResult]) -> str:
    header = (
        "mode",
        "arrivals",
        "kills",
        "verdict keys",
        "dead-lettered",
        "lost",
        "keys >1 distinct verdict",
        "duplicate verdict records",
        "same, read_uncommitted",
        "seconds",
    )
    rows = [
        (
            r.mode,
            str(r.arrivals),
            str(r.kills),
            str(r.verdict_keys),
            str(r.dead_lettered),
            str(r.lost),
            str(r.conflicting),
            str(r.duplicate_records),
            str(r.uncommitted_duplicates),
            f"{r.seconds:.0f}",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [line, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |", line]
    out += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    out.append(line)
    return "\n".join(out)


def _log(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _make_clips(root: Path, count: int = 8, seconds: float = 0.5) -> list[tuple[Path, bytes]]:
    import numpy as np
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    clips = []
    rate = 16000
    for i in range(count):
        rng = np.random.default_rng(i)
        t = np.arange(int(seconds * rate)) / rate
        f0 = 110 + 25 * i
        signal_ = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        signal_ += 0.01 * rng.standard_normal(len(t))
        path = root / f"clip-{i}.wav"
        sf.write(path, signal_.astype(np.float32), rate)
        clips.append((path, path.read_bytes()))
    return clips


def _publish(
    settings: Any,
    tenants: list[str],
    roots: dict[str, Path],
    arrivals: int,
    rng: random.Random,
    rate: float,
    published: list[str],
) -> None:
    """Publish the arrivals at about `rate` per second (the platforms keep publishing while
    the worker is killed); each confirmed key is appended to `published`."""
    from consumers.transport import OutRecord
    from consumers.transports.kafka import KafkaSink
    from services.platform import arrival_for

    clips = {t: _make_clips(roots[t]) for t in tenants}
    sink = KafkaSink(settings.kafka)
    futures = []
    began = time.monotonic()
    for i in range(arrivals):
        ahead = began + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
            sink.poll()
        tenant = tenants[i % len(tenants)]
        key = f"{tenant}:upload-{i}"
        path, data = clips[tenant][rng.randrange(len(clips[tenant]))]
        if i % POISON_EVERY == POISON_EVERY - 1:
            kind = rng.choice(("malformed", "missing"))
            if kind == "malformed":
                value = b'{"event_id": "x", "idempotency_key": "' + key.encode() + b'", "tenant_id": '
            else:
                value = arrival_for(
                    tenant, f"file://{roots[tenant]}/gone-{i}.wav", data, key=key, content_id=key
                )
        else:
            value = arrival_for(tenant, f"file://{path}", data, key=key, content_id=f"upload-{i}")
        while True:
            try:
                future = sink.publish(
                    OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value)
                )
                break
            except Exception:  # noqa: BLE001 - MessageRejected: the local queue is full
                sink.flush(1)
        futures.append((key, future))
    sink.flush(60)
    for key, future in futures:
        future.result(60)
        published.append(key)


def _worker_env(
    settings: Any, workdir: Path, store_url: str, exactly_once: bool, kills: int
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AUDIOGUARD_TRANSPORT": "kafka",
            "AUDIOGUARD_TENANTS": json.dumps(settings.tenants),
            "AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "AUDIOGUARD_KAFKA__GROUP_ID": settings.kafka.group_id,
            "AUDIOGUARD_KAFKA__EXACTLY_ONCE": "true" if exactly_once else "false",
            "AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS": json.dumps(
                {t: [str(workdir / "audio" / t)] for t in settings.tenants}
            ),
            "AUDIOGUARD_STORE__URL": store_url,
            # the same id across restarts: in exactly-once mode a restart fences its predecessor
            "AUDIOGUARD_WORKER_ID": "chaos-worker",
            "AUDIOGUARD_DEVICE": "cpu",
            "AUDIOGUARD_FETCH_THREADS": "2",
            "AUDIOGUARD_DRAIN_SECONDS": "5",
            "AUDIOGUARD_LOG_LEVEL": "WARNING",
            "AUDIOGUARD_BATCH__MAX_WINDOWS": "64",
            "AUDIOGUARD_BATCH__MAX_WAIT_MS": "20",
            "AUDIOGUARD_RETRY__TIER_DELAYS_SECONDS": "[1.0, 3.0]",
            # a few poison arrivals in a row after a restart must not trip the breaker
            "AUDIOGUARD_DLQ__MAX_CONSECUTIVE": "1000",
            # the kills come from here, not from a message: an arrival in flight at two of them
            # would rightly be quarantined as crashed_worker. One more than the kills keeps the
            # quarantine's isolation of suspects in every restart, and its dead letters out.
            "AUDIOGUARD_STORE__QUARANTINE_AFTER": str(kills + 1),
            "OMP_NUM_THREADS": "1",
        }
    )
    env.pop("AUDIOGUARD_CONFIG", None)
    return env


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed by the OS
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _progress(settings: Any, arrivals_topics: list[str], retry: list[str], arrivals: int) -> tuple[int, int]:
    """(committed, to do) over the arrivals and retry topics of the group. The retry topics'
    sizes are counted by reading them (Tansu's ListOffsets does not give record offsets),
    and only once every arrival is committed."""
    from consumers.transports.kafka import committed_offsets, read_topic

    committed = committed_offsets(settings.kafka, arrivals_topics)
    done = sum(max(0, o) for o in committed.values())
    if done < arrivals:
        return done, arrivals
    retried = sum(sum(1 for _ in read_topic(settings.kafka, t, idle=0.3, timeout=30)) for t in retry)
    if retried == 0:
        return done, arrivals
    retry_committed = committed_offsets(settings.kafka, retry)
    return done + sum(max(0, o) for o in retry_committed.values()), arrivals + retried


def run_chaos(
    *,
    arrivals: int,
    kills: int,
    exactly_once: bool = False,
    bootstrap: str | None = None,
    store_url: str | None = None,
    partitions: int = 2,
    min_up: float = 0.0,
    max_up: float = 4.0,
    timeout: float = 1800.0,
    seed: int | None = None,
    workdir: Path | None = None,
    rate: float = 100.0,
) -> ChaosResult:
    """One crash-test run (see the module docstring); returns the counts."""
    from consumers.retry_topics import RetryPolicy, retry_topics
    from consumers.transports.kafka import create_topics, tenant_topics
    from services.local.broker import EmbeddedBroker
    from services.settings import KafkaSettings, Settings

    mode = "exactly-once" if exactly_once else "at-least-once"
    rng = random.Random(seed)
    started = time.monotonic()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="audioguard-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    suffix = uuid.uuid4().hex[:6]
    tenants = [f"chaos{i}-{suffix}" for i in range(3)]
    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
        bootstrap = broker.bootstrap_servers
    result = ChaosResult(mode=mode, arrivals=arrivals, kills=kills)
    worker: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings(
            tenants=tenants,
            kafka=KafkaSettings(bootstrap_servers=bootstrap, group_id=f"chaos-{suffix}"),
        )
        create_topics(settings.kafka, tenant_topics(tenants), partitions=partitions)
        retry = retry_topics(tenants, RetryPolicy((1.0, 3.0)))
        create_topics(settings.kafka, retry)
        roots = {t: workdir / "audio" / t for t in tenants}
        _log(f"{mode}: publishing {arrivals} arrivals over {len(tenants)} tenants at {rate}/s on {bootstrap}")
        published: list[str] = []
        publisher = threading.Thread(
            target=_publish,
            args=(settings, tenants, roots, arrivals, random.Random(rng.random()), rate, published),
            daemon=True,
        )
        publisher.start()
        store = store_url or f"sqlite:///{workdir / f'verdicts-{suffix}.db'}"
        env = _worker_env(settings, workdir, store, exactly_once, kills)
        log_path = workdir / f"worker-{suffix}.log"
        watched = [f"audioguard.arrivals.{t}" for t in tenants]
        deadline = started + timeout
        for kill in range(kills):
            before, _ = _progress(settings, watched, retry, arrivals)
            spawned = time.monotonic()
            worker = _spawn(env, log_path)
            # a kill while the interpreter is still importing proves nothing: wait until this
            # worker has committed something (or a minute passed), then kill at a random moment
            while time.monotonic() - spawned < 60 and worker.poll() is None:
                if _progress(settings, watched, retry, arrivals)[0] > before:
                    break
                time.sleep(0.3)
            time.sleep(rng.uniform(min_up, max_up))
            up = time.monotonic() - spawned
            if worker.poll() is not None:
                _log(f"worker exited by itself with {worker.returncode}; see {log_path}")
                raise RuntimeError(f"worker exited with {worker.returncode} before kill {kill + 1}")
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)
            worker = None
            result.restarts += 1
            done, end = _progress(settings, watched, retry, arrivals)
            _log(f"kill {kill + 1}/{kills} after {up:.1f}s up: committed {done}/{end}")
            if time.monotonic() > deadline:
                raise TimeoutError("chaos run past its timeout")
        worker = _spawn(env, log_path)
        while True:
            time.sleep(2)
            if worker.poll() is not None:
                raise RuntimeError(f"final worker exited with {worker.returncode}; see {log_path}")
            done, end = _progress(settings, watched, retry, arrivals)
            if done >= end and not publisher.is_alive():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"chaos run past its timeout: committed {done}/{end}")
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        worker = None
        publisher.join(60)
        if len(published) != arrivals:
            raise RuntimeError(f"only {len(published)} of {arrivals} arrivals were confirmed by the broker")
        _count(settings, published, result)
        if exactly_once:
            from consumers.transports.kafka import fencing_aborts_open_transactions

            result.broker_aborts_fenced = fencing_aborts_open_transactions(settings.kafka)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(30)
        if broker is not None:
            broker.stop()
    result.seconds = time.monotonic() - started
    _log(
        f"{mode}: lost {result.lost}, keys with >1 distinct verdict {result.conflicting}, "
        f"duplicate verdict records {result.duplicate_records}"
    )
    return result


def _count(settings: Any, keys: list[str], result: ChaosResult) -> None:
    from consumers.tenancy import kafka_topic
    from consumers.transports.kafka import read_topic

    verdicts: dict[str, set[tuple[Any, ...]]] = {}
    records: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    uncommitted: Counter[str] = Counter()
    for tenant in settings.tenants:
        verdict_topic = kafka_topic("verdicts", tenant)
        for _key, value, _ in read_topic(settings.kafka, verdict_topic, idle=3, timeout=600):
            verdict = json.loads(value)
            k = verdict["idempotency_key"]
            records[k] += 1
            identity = (verdict["label"], verdict["score"], verdict["model"]["version"])
            verdicts.setdefault(k, set()).add(identity)
        for key, _value, _ in read_topic(settings.kafka, kafka_topic("dlq", tenant), idle=3, timeout=600):
            dead[(key or b"").decode(errors="replace")] += 1
        # what a reader that ignores transactions would see: shows the aborted rounds' records
        for _key, value, _ in read_topic(
            settings.kafka, verdict_topic, idle=3, timeout=600, isolation="read_uncommitted"
        ):
            uncommitted[json.loads(value)["idempotency_key"]] += 1
    result.verdict_keys = len(verdicts)
    result.dead_lettered = sum(1 for k in keys if k in dead and k not in verdicts)
    result.lost_keys = sorted(k for k in keys if k not in verdicts and k not in dead)
    result.lost = len(result.lost_keys)
    result.conflicting = sum(1 for v in verdicts.values() if len(v) > 1)
    result.duplicate_records = sum(n - 1 for n in records.values())
    result.dlq_duplicates = sum(n - 1 for n in dead.values())
    result.uncommitted_duplicates = sum(n - 1 for n in uncommitted.values())
    if result.lost_keys:
        _log(f"lost keys (first 10): {result.lost_keys[:10]}")
