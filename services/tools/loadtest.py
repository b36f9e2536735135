"""`audioguard loadtest`: the noisy-neighbour and overload measurements, with real worker processes.

Both scenarios run `audioguard worker` as a child process against a real broker (the
embedded Tansu broker unless --bootstrap-servers is given), publish arrivals from this
process at measured rates and read the verdicts back from the verdict topics.

- noisy-neighbour: measures the worker's capacity, then tenant B's end-to-end latency
  (publish -> verdict `processed_at`) at a modest rate alone, and again while tenant A
  publishes at `--flood-factor` times the capacity.
- overload: tenant A at `--flood-factor` times the capacity for `--seconds`; samples the
  worker's resident memory, then stops the worker and accounts for every event: a verdict
  for each one the group committed, the rest still in the broker (lag), none lost.

It prints numbers and returns them (`--json`); it never asserts a time: the tests decide
which properties are robust enough to assert. It must never be imported by the worker.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

__all__ = [
    "NoisyNeighbourResult",
    "OverloadResult",
    "PartitionFairnessResult",
    "RollingRestartResult",
    "noisy_neighbour",
    "overload",
    "partition_fairness",
    "rolling_restart",
]


# -- results ------------------------------------------------------------------------------
@dataclass
class NoisyNeighbourResult:
    capacity_per_second: float
    flood_rate_per_second: float
    b_rate_per_second: float
    b_alone_p50_ms: float
    b_alone_p99_ms: float
    b_with_a_p50_ms: float
    b_with_a_p99_ms: float
    b_alone_count: int
    b_with_a_count: int
    a_published: int
    a_verdicts_during_flood: int
    worker_exit_code: int | None
    worker_stats: dict[str, int] = field(default_factory=dict)
    publish_errors: dict[str, int] = field(default_factory=dict)

    @property
    def p99_ratio(self) -> float:
        return self.b_with_a_p99_ms / max(self.b_alone_p99_ms, 1e-9)


@dataclass
class OverloadResult:
    capacity_per_second: float
    flood_rate_per_second: float
    seconds: float
    published: int
    verdicts: int
    committed: int
    lag_in_broker: int
    lost: int
    rss_samples_mb: list[float]
    rss_after_warmup_min_mb: float
    rss_after_warmup_max_mb: float
    #: largest distance of a sample after warm-up from their median, percent
    rss_deviation_pct: float
    #: mean of the last third of those samples against the first third, percent
    rss_drift_pct: float
    worker_alive_throughout: bool
    worker_exit_code: int | None
    worker_stats: dict[str, int] = field(default_factory=dict)
    publish_errors: dict[str, int] = field(default_factory=dict)


# -- the rig: broker, clips, worker process, publisher, verdict watcher -------------------
class Rig:
    """A broker, two tenants' topics and clips, one worker process and a verdict watcher."""

    def __init__(
        self, bootstrap: str, workdir: Path, clip_seconds: float, partitions: int = 1, shared: bool = False
    ) -> None:
        from services.settings import KafkaSettings

        #: both tenants on the shared arrivals topic (signed headers) instead of their own
        self.shared = shared

        suffix = uuid.uuid4().hex[:6]
        self.a, self.b = f"lt-a-{suffix}", f"lt-b-{suffix}"
        self.workdir = workdir
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap, group_id=f"loadtest-{suffix}")
        self.clips = {t: self._clip(t, clip_seconds) for t in (self.a, self.b)}
        self.published: dict[str, float] = {}  # key -> wall time published
        self.verdicts: dict[str, float] = {}  # key -> processed_at (epoch seconds)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.partitions = partitions
        #: the worker processes by name; `process` is the one called "worker"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._watching = False
        self.rss_samples: list[tuple[float, float]] = []  # (monotonic, MiB)
        self.exit_code: int | None = None
        self.stats: dict[str, int] = {}
        # one producer per tenant, as two platforms would have: B's arrivals never wait in
        # the queue of a producer that A floods
        self._sinks: dict[str, Any] = {}
        self._pending: dict[str, list[tuple[str, Any]]] = {self.a: [], self.b: []}
        self._templates: dict[str, bytes] = {}
        #: publish failures by error (the broker refused the arrival: not the worker's loss)
        self.publish_errors: dict[str, int] = {}
        self.failed: set[str] = set()

    def _clip(self, tenant: str, seconds: float) -> tuple[str, bytes]:
        import io
        import wave

        import numpy as np

        rng = np.random.default_rng(len(tenant))
        t = np.arange(int(16000 * seconds)) / 16000
        # a voiced-ish tone with noise: any decodable audio works, the detector's cost is per window
        samples = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        data = buffer.getvalue()
        path = self.workdir / tenant / "clip.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"file://{path}", data

    def provision(self) -> None:
        from consumers.transports.kafka import KafkaSink, create_topics, tenant_topics

        if self.shared:
            from services.platform import SHARED_ARRIVALS_TOPIC

            topics = tenant_topics([self.a, self.b], ("verdicts", "dlq"))
            topics += [SHARED_ARRIVALS_TOPIC, SHARED_ARRIVALS_TOPIC.replace(".arrivals.", ".dlq.")]
            create_topics(self.kafka, topics, partitions=self.partitions)
        else:
            create_topics(self.kafka, tenant_topics([self.a, self.b]), partitions=self.partitions)
        self._sinks = {t: KafkaSink(self.kafka) for t in (self.a, self.b)}

    def start_worker(self, name: str = "worker", **settings: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            {
                "AUDIOGUARD_TENANTS": json.dumps([self.a, self.b]),
                "AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                "AUDIOGUARD_KAFKA__GROUP_ID": self.kafka.group_id,
                "AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS": json.dumps(
                    {t: [str(self.workdir / t)] for t in (self.a, self.b)}
                ),
                # a file-backed verdict store: an in-memory one would grow with every verdict and
                # hide the pipeline's own memory behaviour under it
                "AUDIOGUARD_STORE__URL": f"sqlite:///{self.workdir / 'verdicts.db'}",
                "AUDIOGUARD_LOG_LEVEL": "WARNING",
                "AUDIOGUARD_DEVICE": "cpu",
            }
        )
        if self.shared:
            # no dedicated topics: the pattern finds none on the rig's own broker
            env["AUDIOGUARD_TENANTS"] = "[]"
            env["AUDIOGUARD_SHARED_TENANTS"] = json.dumps([self.a, self.b])
            env["AUDIOGUARD_TENANT_SECRETS"] = json.dumps(
                {t: self._secret(t).decode() for t in (self.a, self.b)}
            )
        env.update({f"AUDIOGUARD_{k.upper()}": v for k, v in settings.items()})
        env.pop("AUDIOGUARD_CONFIG", None)
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker"], env=env, stdout=log, stderr=log
        )
        self.processes[name] = process
        if name == "worker":
            self.process = process
            self._spawn(self._sample_rss)
        if not self._watching:
            self._watching = True
            for tenant in (self.a, self.b):
                self._spawn(self._watch, tenant)
        return process

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sample_rss(self) -> None:
        assert self.process is not None
        while not self._stop.is_set() and self.process.poll() is None:
            try:
                status = Path(f"/proc/{self.process.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.rss_samples.append((time.monotonic(), int(line.split()[1]) / 1024))
            self._stop.wait(1.0)

    def _watch(self, tenant: str) -> None:
        from consumers.tenancy import kafka_topic
        from consumers.transports.kafka import read_topic

        for _key, value, _headers in read_topic(
            self.kafka, kafka_topic("verdicts", tenant), follow=True, stop=self._stop.is_set
        ):
            verdict = json.loads(value)
            processed = datetime.fromisoformat(verdict["processed_at"]).timestamp()
            with self._lock:
                self.verdicts.setdefault(verdict["idempotency_key"], processed)

    def publish(self, tenant: str, count: int) -> list[str]:
        from consumers.transport import MessageRejected, OutRecord

        template = self._template(tenant)
        keys = []
        for _ in range(count):
            content = uuid.uuid4().hex[:12]
            key = f"{tenant}:{content}"
            value = (
                template.replace(b"@KEY@", key.encode())
                .replace(b"@CONTENT@", content.encode())
                .replace(b"@EVENT@", str(uuid.uuid4()).encode())
                .replace(b"@AT@", datetime.now(UTC).isoformat().encode())
            )
            record = OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value)
            if self.shared:
                from services.platform import SIGNATURE_HEADER, TENANT_HEADER, sign_tenant

                signature = sign_tenant(self._secret(tenant), tenant, key, value).encode()
                headers = ((TENANT_HEADER, tenant.encode()), (SIGNATURE_HEADER, signature))
                record = replace(record, tenant="_shared", headers=headers)
            while True:
                try:
                    future = self._sinks[tenant].publish(record)
                    break
                except MessageRejected:  # the producer's own queue is full: let it deliver
                    self._sinks[tenant].flush(1)
            with self._lock:
                self.published[key] = time.time()
                self._pending[tenant].append((key, future))
            keys.append(key)
        self._sinks[tenant].poll()
        return keys

    def _secret(self, tenant: str) -> bytes:
        return f"loadtest-secret-{tenant}".encode()

    def _template(self, tenant: str) -> bytes:
        """The tenant's arrival with placeholders, validated once by the contract: a flood of
        10x capacity must not spend the machine's CPU on building events (it is shared with
        the worker under test)."""
        from schemas import AudioArrival
        from services.platform import arrival_for

        if tenant not in self._templates:
            uri, data = self.clips[tenant]
            value = arrival_for(tenant, uri, data, key="@KEY@", content_id="@CONTENT@")
            arrival = json.loads(value)
            arrival["event_id"], arrival["submitted_at"] = "@EVENT@", "@AT@"
            template = json.dumps(arrival).encode()
            sample = (
                template.replace(b"@KEY@", b"k")
                .replace(b"@CONTENT@", b"c")
                .replace(b"@EVENT@", str(uuid.uuid4()).encode())
                .replace(b"@AT@", datetime.now(UTC).isoformat().encode())
            )
            AudioArrival.model_validate_json(sample)
            self._templates[tenant] = template
        return self._templates[tenant]

    def settle(self, keys: list[str]) -> list[str]:
        """Flush the producer; forget arrivals the broker refused (never in the broker, so
        never the worker's to lose) and count them."""
        tenants = {k.split(":", 1)[0] for k in keys}
        pending = []
        for tenant in tenants:
            self._sinks[tenant].flush(60)
            with self._lock:
                pending += self._pending[tenant]
                self._pending[tenant] = []
        for key, future in pending:
            error = future.exception(timeout=60)
            if error is not None:
                with self._lock:
                    self.failed.add(key)
                    self.publish_errors[str(error)] = self.publish_errors.get(str(error), 0) + 1
                    self.published.pop(key, None)
        with self._lock:
            return [k for k in keys if k not in self.failed]

    def publish_at(self, tenant: str, rate: float, seconds: float, stop: threading.Event) -> list[str]:
        """Publish at `rate` per second for `seconds` (paced every 20 ms)."""
        keys: list[str] = []
        started = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            due = int(rate * elapsed) + 1 - len(keys)
            if due > 0:
                keys += self.publish(tenant, due)
            time.sleep(0.02)
        return self.settle(keys)

    def partitions_of(self, tenant: str) -> dict[str, int]:
        """key -> partition of every arrival of `tenant` in the broker (read back, so it is
        where the producer's partitioner really put it)."""
        from consumers.tenancy import kafka_topic
        from consumers.transports.kafka import GroupReader

        reader = GroupReader(
            self.kafka,
            kafka_topic("arrivals", tenant),
            f"lt-reader-{uuid.uuid4().hex[:8]}",
            from_beginning=True,
        )
        try:
            records = reader.records(timeout=120)
            return {(m.key or b"").decode(): cast(int, m.coordinates["partition"]) for m in records}
        finally:
            reader.close()

    def events(self, name: str, message: str) -> list[tuple[float, list[str]]]:
        """(epoch seconds, partitions) of each JSON log line of worker `name` saying `message`
        (the worker must run with LOG_LEVEL=INFO for the rebalance lines)."""
        found = []
        for line in (self.workdir / f"{name}.log").read_text(errors="replace").splitlines():
            if f'"message": "{message}"' not in line:
                continue
            with suppress(ValueError, KeyError):
                record = json.loads(line)
                at = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
                found.append((at, list(record.get("partitions", []))))
        return found

    def count_done(self, keys: list[str]) -> int:
        with self._lock:
            return sum(1 for k in keys if k in self.verdicts)

    def wait_done(self, keys: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_done(keys) >= len(keys):
                return True
            for name, process in self.processes.items():
                if process.poll() is not None and process.returncode != 0:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}: see {self.workdir}/{name}.log"
                    )
            time.sleep(0.05)
        return False

    def latencies_ms(self, keys: list[str]) -> list[float]:
        with self._lock:
            return sorted((self.verdicts[k] - self.published[k]) * 1000 for k in keys if k in self.verdicts)

    def measure_capacity(self, count: int = 300) -> float:
        """Verdicts per second while a backlog of `count` events of one tenant is worked off,
        from the first publish to the last verdict (a backlog large enough that the first
        poll's and the last batch's latency do not dominate)."""
        started = time.time()
        keys = self.settle(self.publish(self.a, count))
        if not self.wait_done(keys, timeout=600):
            raise RuntimeError("the worker did not finish the capacity run")
        with self._lock:
            last = max(self.verdicts[k] for k in keys)
        return count / max(last - started, 1e-3)

    def stop_worker(self, timeout: float = 60.0, name: str = "worker") -> int | None:
        """SIGTERM the worker `name` and wait for it; returns its exit code."""
        process = self.processes.get(name)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if name != "worker":
            return process.returncode
        self.exit_code = process.returncode
        for line in (self.workdir / "worker.log").read_text(errors="replace").splitlines():
            if '"worker stopped"' in line:
                with suppress(ValueError, KeyError):
                    self.stats = json.loads(line)["stats"]
        return process.returncode

    def close(self) -> None:
        for name in list(self.processes):
            self.stop_worker(name=name)
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        for sink in self._sinks.values():
            sink.flush(10)


@contextmanager
def _rig(
    bootstrap: str | None,
    clip_seconds: float,
    partitions: int = 1,
    keep: Path | None = None,
    shared: bool = False,
) -> Iterator[Rig]:
    """`keep`: a directory for the clips and logs (the workers', the broker's) that is left
    in place afterwards, instead of a temporary one."""
    from services.local.broker import EmbeddedBroker

    with ExitStack() as stack:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="audioguard-loadtest-", dir=keep))
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="audioguard-loadtest-")))
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "tansu.log"))
            bootstrap = broker.bootstrap_servers
        rig = Rig(bootstrap, workdir, clip_seconds, partitions, shared=shared)
        stack.callback(rig.close)
        rig.provision()
        yield rig


def _warm_up(rig: Rig) -> None:
    """The worker has joined its group and scored one event of each tenant."""
    keys = rig.settle(rig.publish(rig.a, 1) + rig.publish(rig.b, 1))
    if not rig.wait_done(keys, timeout=180):
        raise RuntimeError("the worker never produced its first verdicts")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# -- scenarios ----------------------------------------------------------------------------
def noisy_neighbour(
    *,
    seconds: float = 30.0,
    b_rate: float = 2.0,
    flood_factor: float = 10.0,
    clip_seconds: float = 2.0,
    bootstrap: str | None = None,
    capacity_events: int = 300,
    worker_settings: dict[str, str] | None = None,
    shared: bool = False,
) -> NoisyNeighbourResult:
    """`shared`: both tenants publish to the shared arrivals topic (one partition), signed."""
    with _rig(bootstrap, clip_seconds, shared=shared) as rig:
        rig.start_worker(**(worker_settings or {}))
        _warm_up(rig)
        capacity = rig.measure_capacity(capacity_events)
        flood_rate = capacity * flood_factor
        never = threading.Event()

        alone = rig.publish_at(rig.b, b_rate, seconds, never)
        rig.wait_done(alone, timeout=60 + seconds)

        flooded: list[str] = []
        stop_flood = threading.Event()
        flood = threading.Thread(
            target=lambda: flooded.extend(rig.publish_at(rig.a, flood_rate, seconds * 10, stop_flood)),
            daemon=True,
        )
        flood.start()
        time.sleep(min(5.0, seconds / 4))  # A's backlog builds before B's samples start
        with_a = rig.publish_at(rig.b, b_rate, seconds, never)
        rig.wait_done(with_a, timeout=60 + seconds)
        stop_flood.set()
        flood.join(30)
        a_done = rig.count_done(flooded)
        rig.stop_worker()
        lat_alone, lat_with = rig.latencies_ms(alone), rig.latencies_ms(with_a)
        return NoisyNeighbourResult(
            capacity_per_second=capacity,
            flood_rate_per_second=flood_rate,
            b_rate_per_second=b_rate,
            b_alone_p50_ms=_percentile(lat_alone, 50),
            b_alone_p99_ms=_percentile(lat_alone, 99),
            b_with_a_p50_ms=_percentile(lat_with, 50),
            b_with_a_p99_ms=_percentile(lat_with, 99),
            b_alone_count=len(lat_alone),
            b_with_a_count=len(lat_with),
            a_published=len(flooded),
            a_verdicts_during_flood=a_done,
            worker_exit_code=rig.exit_code,
            worker_stats=rig.stats,
            publish_errors=rig.publish_errors,
        )


def overload(
    *,
    seconds: float = 60.0,
    warmup: float = 10.0,
    flood_factor: float = 10.0,
    clip_seconds: float = 2.0,
    bootstrap: str | None = None,
    capacity_events: int = 300,
    drain: bool = False,
    worker_settings: dict[str, str] | None = None,
) -> OverloadResult:
    """`drain=True` (CI sizes) restarts the worker after the flood until every event has its
    verdict; otherwise the rest is accounted for as lag in the broker."""
    from consumers.tenancy import kafka_topic
    from consumers.transports.kafka import committed_offsets, read_topic

    with _rig(bootstrap, clip_seconds) as rig:
        rig.start_worker(**(worker_settings or {}))
        _warm_up(rig)
        capacity = rig.measure_capacity(capacity_events)
        flood_rate = capacity * flood_factor
        before = set(rig.published)
        started = time.monotonic()
        flooded = rig.publish_at(rig.a, flood_rate, seconds, threading.Event())
        assert rig.process is not None
        alive = rig.process.poll() is None
        rig.stop_worker()
        topic = kafka_topic("arrivals", rig.a)
        committed = sum(max(0, o) for o in committed_offsets(rig.kafka, [topic]).values())
        # what is in the broker, in offset order (one partition, no transactions: index == offset).
        # Counted by reading: Tansu's reported high watermark can trail the last produced batch.
        in_broker = [
            (key or b"").decode() for key, _v, _h in read_topic(rig.kafka, topic, idle=3, timeout=600)
        ]
        behind = set(in_broker[committed:])
        time.sleep(2.0)  # the watcher reads the last verdicts
        if drain:
            rig.start_worker(**(worker_settings or {}))
            rig.wait_done(flooded, timeout=600)
            rig.stop_worker()
            behind = set()
        with rig._lock:
            all_a = {k for k in rig.published if k.startswith(rig.a)}
            verdicted = all_a & set(rig.verdicts)
        settled = rig.count_done([k for k in flooded if k not in before])
        counted = [mb for t, mb in rig.rss_samples if t - started >= warmup and t - started <= seconds]
        # the reference is the median after warm-up (one sample can sit at a trough of the
        # allocator's cycle); drift compares the last third of the samples with the first
        base = statistics.median(counted) if counted else float("nan")
        deviation = max((abs(mb / base - 1) * 100 for mb in counted), default=float("nan"))
        third = max(1, len(counted) // 3)
        drift = (
            (statistics.mean(counted[-third:]) / statistics.mean(counted[:third]) - 1) * 100
            if counted
            else float("nan")
        )
        return OverloadResult(
            capacity_per_second=capacity,
            flood_rate_per_second=flood_rate,
            seconds=seconds,
            published=len(flooded),
            verdicts=settled,
            committed=committed,
            lag_in_broker=len(in_broker) - committed,
            # every arrival of A has its verdict or is still in the broker past the committed offset
            lost=len(all_a - verdicted - behind),
            rss_samples_mb=[round(mb, 1) for _t, mb in rig.rss_samples],
            rss_after_warmup_min_mb=min(counted, default=float("nan")),
            rss_after_warmup_max_mb=max(counted, default=float("nan")),
            rss_deviation_pct=deviation,
            rss_drift_pct=drift,
            worker_alive_throughout=alive,
            worker_exit_code=rig.exit_code,
            worker_stats=rig.stats,
            publish_errors=rig.publish_errors,
        )


@dataclass
class PartitionFairnessResult:
    partitions: int
    backlog: int
    #: arrivals of the backlog per partition
    per_partition: dict[int, int]
    #: first -> last verdict of the backlog
    drain_seconds: float
    #: per partition: the longest time it got no verdict while it still had events waiting
    #: (from the first verdict of any partition to its own last one)
    longest_wait_s: dict[int, float]
    #: verdicts of the other partitions during that longest wait
    others_during_wait: dict[int, int]
    #: the least (verdicts in the first half of the drain / its fair part of them) over the
    #: partitions: 1.0 = every partition progressed in proportion to its backlog, 0 = one starved
    min_first_half_share: float
    #: verdicts per partition in each second of the drain
    timeline: list[list[int]]
    worker_exit_code: int | None
    publish_errors: dict[str, int] = field(default_factory=dict)


def partition_fairness(
    *,
    backlog: int = 1500,
    partitions: int = 2,
    clip_seconds: float = 2.0,
    bootstrap: str | None = None,
    worker_settings: dict[str, str] | None = None,
    keep: Path | None = None,
) -> PartitionFairnessResult:
    """One tenant, `partitions` partitions, a backlog of `backlog` arrivals published while
    the worker is stopped; then the worker starts and works it off. Measures, per
    partition, how long it waited for verdicts while the others got theirs."""
    settings = worker_settings or {}
    with _rig(bootstrap, clip_seconds, partitions, keep) as rig:
        rig.start_worker(**settings)
        _warm_up(rig)
        rig.stop_worker()
        keys = rig.settle(rig.publish(rig.a, backlog))
        where = rig.partitions_of(rig.a)
        rig.start_worker(**settings)
        if not rig.wait_done(keys, timeout=900):
            raise RuntimeError(f"the worker did not work off the backlog: see {rig.workdir}/worker.log")
        rig.stop_worker()
        with rig._lock:
            done = sorted((rig.verdicts[k], where[k]) for k in keys if k in where)
        first, last = done[0][0], done[-1][0]
        counts = {p: sum(1 for k in keys if where.get(k) == p) for p in range(partitions)}
        longest: dict[int, float] = {}
        others: dict[int, int] = {}
        for p in range(partitions):
            times = [first] + [t for t, q in done if q == p]
            gaps = [(b - a, a, b) for a, b in zip(times, times[1:], strict=False)]
            gap, start, end = max(gaps, default=(0.0, first, first))
            longest[p] = gap
            others[p] = sum(1 for t, q in done if q != p and start < t < end)
        half = done[: len(done) // 2]
        shares = [
            sum(1 for _t, q in half if q == p) / (len(half) * counts[p] / len(done))
            for p in range(partitions)
            if counts[p]
        ]
        timeline = [[0] * partitions for _ in range(int(last - first) + 1)]
        for t, q in done:
            timeline[int(t - first)][q] += 1
        return PartitionFairnessResult(
            partitions=partitions,
            backlog=len(keys),
            per_partition=counts,
            drain_seconds=last - first,
            longest_wait_s=longest,
            others_during_wait=others,
            min_first_half_share=min(shares, default=float("nan")),
            timeline=timeline,
            worker_exit_code=rig.exit_code,
            publish_errors=rig.publish_errors,
        )


@dataclass
class RollingRestartResult:
    assignment_strategy: str
    static_membership: bool
    workers: int
    partitions: int
    rate_per_second: float
    baseline_p50_ms: float
    baseline_p99_ms: float
    baseline_count: int
    #: latency of the arrivals published from the first SIGTERM to `interval` after the last start
    restart_p50_ms: float
    restart_p99_ms: float
    restart_max_ms: float
    restart_count: int
    #: the longest time no verdict at all came out (baseline phase / restart phase)
    baseline_longest_gap_s: float
    restart_longest_gap_s: float
    #: partitions revoked from the workers that kept running, over the restart phase
    revoked_from_survivors: int
    #: seconds from each SIGTERM to the restarted worker holding partitions again
    rejoin_seconds: list[float]
    exit_codes: list[int | None]
    publish_errors: dict[str, int] = field(default_factory=dict)


def rolling_restart(
    *,
    workers: int = 3,
    partitions: int = 6,
    rate: float = 5.0,
    baseline: float = 20.0,
    interval: float = 20.0,
    assignment_strategy: str = "cooperative-sticky",
    static_membership: bool = False,
    clip_seconds: float = 2.0,
    bootstrap: str | None = None,
    worker_settings: dict[str, str] | None = None,
    keep: Path | None = None,
) -> RollingRestartResult:
    """`workers` workers in one group share one tenant's `partitions` partitions while it
    publishes `rate` arrivals a second: `baseline` seconds undisturbed, then each worker in
    turn is SIGTERMed, started again once it exited, and left `interval` seconds (counted
    from holding partitions again) before the next one. Latencies by publish time."""
    names = [f"w{i}" for i in range(workers)]
    settings = (worker_settings or {}) | {
        "LOG_LEVEL": "INFO",
        "KAFKA__ASSIGNMENT_STRATEGY": assignment_strategy,
        "KAFKA__STATIC_MEMBERSHIP": "true" if static_membership else "false",
    }
    with _rig(bootstrap, clip_seconds, partitions, keep) as rig:

        def start(name: str) -> None:
            rig.start_worker(name, WORKER_ID=name, KAFKA__GROUP_INSTANCE_ID=name, **settings)

        def wait_holding(name: str, since: float, timeout: float = 180.0) -> float:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                found = [at for at, parts in rig.events(name, "partitions assigned") if at >= since and parts]
                if found:
                    return min(found)
                time.sleep(0.2)
            raise RuntimeError(f"{name} never got partitions: see {rig.workdir}/{name}.log")

        began = time.time()
        for name in names:
            start(name)
        _warm_up(rig)
        for name in names:
            wait_holding(name, began)
        stop = threading.Event()
        published: list[str] = []
        publisher = threading.Thread(
            target=lambda: published.extend(rig.publish_at(rig.a, rate, 10**9, stop)), daemon=True
        )
        publisher.start()
        # the group settles (a late join's rebalance) before the baseline counts
        time.sleep(interval / 2)
        t_baseline = time.time()
        time.sleep(baseline)
        t_restart = time.time()
        rejoin: list[float] = []
        codes: list[int | None] = []
        stopping: dict[str, tuple[float, float]] = {}
        for name in names:
            stopped_at = time.time()
            codes.append(rig.stop_worker(name=name))
            stopping[name] = (stopped_at, time.time())
            start(name)
            rejoin.append(wait_holding(name, stopped_at) - stopped_at)
            time.sleep(interval)
        t_end = time.time()
        stop.set()
        publisher.join(60)
        rig.wait_done(published, timeout=120)
        with rig._lock:
            sent = {k: rig.published[k] for k in published if k in rig.published}
            seen = {k: rig.verdicts[k] for k in sent if k in rig.verdicts}
        base_keys = [k for k, at in sent.items() if t_baseline <= at < t_restart]
        restart_keys = [k for k, at in sent.items() if t_restart <= at < t_end]
        base_lat, restart_lat = rig.latencies_ms(base_keys), rig.latencies_ms(restart_keys)

        def longest_gap(start_at: float, end_at: float) -> float:
            times = [start_at] + sorted(t for t in seen.values() if start_at <= t < end_at) + [end_at]
            return max(b - a for a, b in zip(times, times[1:], strict=False))

        # what a worker gives up while it is the one stopping is expected; count the others'
        revoked = sum(
            len(parts)
            for name in names
            for at, parts in rig.events(name, "partitions revoked")
            if t_restart <= at < t_end and not stopping[name][0] <= at <= stopping[name][1]
        )
        for name in names:
            rig.stop_worker(name=name)
        return RollingRestartResult(
            assignment_strategy=assignment_strategy,
            static_membership=static_membership,
            workers=workers,
            partitions=partitions,
            rate_per_second=rate,
            baseline_p50_ms=_percentile(base_lat, 50),
            baseline_p99_ms=_percentile(base_lat, 99),
            baseline_count=len(base_lat),
            restart_p50_ms=_percentile(restart_lat, 50),
            restart_p99_ms=_percentile(restart_lat, 99),
            restart_max_ms=max(restart_lat, default=float("nan")),
            restart_count=len(restart_lat),
            baseline_longest_gap_s=longest_gap(t_baseline, t_restart),
            restart_longest_gap_s=longest_gap(t_restart, t_end),
            revoked_from_survivors=revoked,
            rejoin_seconds=[round(r, 2) for r in rejoin],
            exit_codes=codes,
            publish_errors=rig.publish_errors,
        )


# -- commands -----------------------------------------------------------------------------
