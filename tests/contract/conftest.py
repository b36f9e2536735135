"""The conformance suite's fixtures: one harness per transport, each on its real server.

    kafka    Tansu (services.local.broker.EmbeddedBroker), audio on file://
    pubsub   Google's Pub/Sub emulator (services.local.emulators.PubSubEmulator), audio on file://
    kinesis  moto_server (services.local.emulators.MotoServer) for Kinesis *and* S3: audio on s3://
    kinesis-leases  the same, with the DynamoDB lease table on (moto too): workers share shards
    memory   the in-process broker (consumers.transports.memory), audio on file://

Each server is started once per session on a free loopback port and stopped at the end.
The harness publishes arrivals the way a platform would (through the transport's Sink),
reads a tenant's verdicts and dead letters back, and runs real `audioguard worker
--transport X` processes configured through AUDIOGUARD_* variables. Tests see only the
harness, so every scenario is written once and runs against every transport of
`consumers.transports.registry`.

The memory broker cannot be reached from another process, so on memory the worker runs on
a thread of this process (the same `build_worker` the CLI calls). A scenario that needs a
worker in a process of its own (one it can SIGKILL) is marked `cross_process` and is not
applicable there: it is reported as skipped, with that reason, never as passed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consumers.transport import OutRecord
from consumers.transports.registry import TRANSPORTS
from services.local.emulators import free_port
from services.platform import arrival_for
from services.settings import Settings
from tests.support.audio import encode, speechlike

#: moto accepts any credentials; boto3 needs some to sign with (S3 and Kinesis)
AWS_ENV = {"AWS_ACCESS_KEY_ID": "audioguard-test", "AWS_SECRET_ACCESS_KEY": "audioguard-test"}


@dataclass
class WorkerProcess:
    """One `audioguard worker` subprocess; its output goes to `log`, its metrics to `metrics_port`."""

    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def counts(self) -> dict[str, float]:
        """The worker's `audioguard_*` counters and gauges from its /metrics page, summed over
        their labels (`events_consumed`, `events_acked`, `verdicts`, `duplicates`, `ready`, ...);
        empty while the page cannot be read yet (the process is still importing)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as page:
                text = page.read().decode()
        except OSError:
            return {}
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            name = family.name.removeprefix("audioguard_")
            for sample in family.samples:
                if sample.name in (family.name, f"{family.name}_total"):
                    counts[name] = counts.get(name, 0.0) + sample.value
        return counts

    def started(self) -> bool:
        """The model is loaded and warmed up (its /readyz may still wait for the transport:
        on Kafka until the group assigned it partitions)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5) as page:
                return page.status == 200
        except urllib.error.HTTPError as not_ready:
            missing = not_ready.read().decode()
            return "model_loaded" not in missing and "warmed_up" not in missing
        except OSError:
            return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no ack, no goodbye."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60.0) -> dict[str, int]:
        """SIGTERM, wait, and return the final counts the worker printed."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            if '"worker stopped"' in line:
                stats: dict[str, int] = json.loads(line)["stats"]
                return stats
        raise AssertionError(
            f"the worker printed no final counts (exit {self.process.returncode}); see {self.log}"
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def failure(self) -> str | None:
        """Why the worker is gone, if it died on its own (not stopped, not SIGKILLed)."""
        if self.process.poll() in (None, 0, -signal.SIGKILL):
            return None
        return f"a worker exited with {self.process.returncode}:\n{self.output()[-3000:]}"


class ThreadWorker:
    """The same worker (`build_worker`) on a thread of this process, for the in-process broker.

    It answers what a scenario asks of a `WorkerProcess` except `kill`: a thread cannot be
    SIGKILLed, which is why `cross_process` scenarios do not run on such a transport."""

    def __init__(self, settings: Settings, detector: Any) -> None:
        from services.tools.worker import build_worker

        self.worker = build_worker(settings, detector=detector)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="contract-worker")
        self._thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self._stop)
        except BaseException as error:  # noqa: BLE001 - reported by failure() and stop()
            self.error = error

    def alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        raise NotImplementedError("an in-process worker cannot be SIGKILLed")

    def stop(self, timeout: float = 60.0) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the in-process worker did not stop within {timeout:.0f}s")
        if self.error is not None:
            raise self.error
        return dict(vars(self.worker.pipeline.stats))

    def output(self) -> str:
        return repr(self.error) if self.error is not None else ""

    def failure(self) -> str | None:
        return None if self.error is None else f"the in-process worker failed: {self.error!r}"

    def close(self) -> None:
        if self.alive():
            self.stop()


@dataclass(frozen=True)
class Redelivery:
    """How a killed worker's successor took over, in seconds after the SIGKILL."""

    #: what the transport's settings promise (`Harness.redelivery_bound`)
    bound: float
    #: the successor had loaded and warmed up its model
    started: float
    #: the successor received its first arrival: the redelivery
    first_delivery: float
    #: the successor had answered everything the dead worker left
    answered: float

    def line(self, transport: str) -> str:
        """The one line scripts/crash_loop.sh collects."""
        return (
            f"{transport}: redelivery after SIGKILL: bound {self.bound:.1f}s, successor started "
            f"{self.started:.1f}s, first redelivery {self.first_delivery:.1f}s, every arrival "
            f"answered {self.answered:.1f}s"
        )


@dataclass
class Harness:
    """Everything a scenario needs from one transport."""

    transport: str
    endpoint: str
    workdir: Path
    #: the shipped detector, for workers on a thread of this process (in-process transports)
    detector: Callable[[], Any] | None = None
    #: Kinesis only: shards shared through the DynamoDB lease table
    leases: bool = False
    workers: list[WorkerProcess | ThreadWorker] = field(default_factory=list)
    _seen: dict[tuple[str, str], list[tuple[bytes, list[tuple[str, bytes]]]]] = field(default_factory=dict)

    # -- configuration -----------------------------------------------------------------

    def tenants(self, n: int = 2) -> list[str]:
        run = uuid.uuid4().hex[:6]
        return [f"c{i}-{run}" for i in range(n)]

    def settings(self, tenants: list[str], **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "transport": self.transport,
            "tenants": tenants,
            "store": {"url": f"sqlite:///{self.store_path(tenants)}"},
        }
        if self.transport == "kafka":
            values["kafka"] = {"bootstrap_servers": self.endpoint, "group_id": f"contract-{tenants[0]}"}
            if "CONTRACT_KAFKA_SESSION_TIMEOUT_MS" in os.environ:
                # a longer session shows the redelivery bound apart from a slow successor's start
                values["kafka"]["session_timeout_ms"] = int(os.environ["CONTRACT_KAFKA_SESSION_TIMEOUT_MS"])
            values["storage"] = {"tenant_file_roots": {t: [str(self.workdir / "audio" / t)] for t in tenants}}
        elif self.transport == "pubsub":
            # the shortest ack deadline (CONTRACT_PUBSUB_ACK_DEADLINE_SECONDS to measure another), so
            # a dead worker's messages return quickly; plenty of attempts, since the emulator counts
            # its pushes to a dead stream (consumers.transports.pubsub)
            values["pubsub"] = {
                "emulator_host": self.endpoint,
                "ack_deadline_seconds": int(os.environ.get("CONTRACT_PUBSUB_ACK_DEADLINE_SECONDS", "10")),
                "max_delivery_attempts": 50,
            }
            values["storage"] = {"tenant_file_roots": {t: [str(self.workdir / "audio" / t)] for t in tenants}}
        elif self.transport == "memory":
            values["memory"] = {"broker": self.endpoint, "group_id": f"contract-{tenants[0]}"}
            values["storage"] = {"tenant_file_roots": {t: [str(self.workdir / "audio" / t)] for t in tenants}}
        else:
            values["kinesis"] = {"endpoint_url": self.endpoint, "poll_interval_seconds": 0.05}
            if self.leases:
                values["kinesis"].update(
                    leases=True,
                    failover_seconds=float(os.environ.get("CONTRACT_KINESIS_FAILOVER_SECONDS", "6")),
                    lease_table=f"leases-{tenants[0]}",
                )
            values["storage"] = {
                "s3_endpoint_url": self.endpoint,
                "tenant_s3_locations": {t: [f"contract-audio/{t}/"] for t in tenants},
            }
        values.update(overrides)
        return Settings(**values)

    def store_path(self, tenants: list[str]) -> Path:
        return self.workdir / f"verdicts-{tenants[0]}.db"

    def provision(self, settings: Settings) -> None:
        from consumers.transports.registry import provision

        provision(settings, settings.tenants, partitions=2)

    def worker_env(self, settings: Settings, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOGUARD_")}
        env.update(AWS_ENV)
        env.update(
            {
                "AUDIOGUARD_TRANSPORT": self.transport,
                "AUDIOGUARD_TENANTS": json.dumps(settings.tenants),
                "AUDIOGUARD_STORE__URL": settings.store.url,
                "AUDIOGUARD_WORKER_ID": f"contract-{settings.tenants[0]}",
                "AUDIOGUARD_DEVICE": "cpu",
                "AUDIOGUARD_FETCH_THREADS": "2",
                "AUDIOGUARD_DRAIN_SECONDS": "5",
                # CONTRACT_WORKER_LOG_LEVEL=DEBUG traces every lease event into the worker logs
                "AUDIOGUARD_LOG_LEVEL": os.environ.get("CONTRACT_WORKER_LOG_LEVEL", "WARNING"),
                "AUDIOGUARD_BATCH__MAX_WAIT_MS": "20",
                "AUDIOGUARD_STORAGE": settings.storage.model_dump_json(),
                "OMP_NUM_THREADS": "1",
            }
        )
        if self.transport == "kafka":
            env["AUDIOGUARD_KAFKA"] = settings.kafka.model_dump_json(exclude={"sasl_password"})
        elif self.transport == "pubsub":
            env["AUDIOGUARD_PUBSUB"] = settings.pubsub.model_dump_json()
        else:
            env["AUDIOGUARD_KINESIS"] = settings.kinesis.model_dump_json()
        env.update(extra)
        return env

    # -- the platform side -------------------------------------------------------------

    def store_audio(self, tenant: str, name: str, data: bytes) -> str:
        from services.storage import AudioStorage

        settings = self.settings([tenant])
        if self.transport == "kinesis":
            uri = f"s3://contract-audio/{tenant}/{name}"
        else:
            uri = f"file://{self.workdir / 'audio' / tenant / name}"
        return AudioStorage(settings.storage).put(data, uri)

    def publish(self, settings: Settings, records: list[OutRecord]) -> None:
        from consumers.transports.registry import open_publisher

        sink = open_publisher(settings)
        try:
            futures = [sink.publish(record) for record in records]
            sink.flush(30)
            for future in futures:
                future.result(30)
        finally:
            sink.close(10)

    def arrivals(
        self, settings: Settings, tenant: str, count: int, seed: int = 0
    ) -> tuple[list[str], list[OutRecord]]:
        """`count` short clips stored for `tenant` and their arrival records; returns (keys, records)."""
        keys, records = [], []
        for i in range(count):
            data = encode(speechlike(1.0, seed=seed + i))
            content_id = f"clip-{seed + i}"
            uri = self.store_audio(tenant, f"{content_id}.wav", data)
            key = f"{tenant}:{content_id}"
            value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
            records.append(OutRecord(tenant, "arrivals", key.encode(), value, ordering_key=content_id))
            keys.append(key)
        return keys, records

    # -- reading destinations ------------------------------------------------------------

    def read(self, settings: Settings, tenant: str, kind: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
        """Every record of the tenant's verdicts ("verdicts") or dead letters ("dlq") so far.

        Kafka and Kinesis are read from the beginning each time; a Pub/Sub subscription
        hands each message out once, so what was read before is remembered here."""
        if self.transport == "kafka":
            from consumers.tenancy import kafka_topic
            from consumers.transports.kafka import read_topic

            rows = read_topic(settings.kafka, kafka_topic(kind, tenant), idle=0.5, timeout=10)
            return [(value, list(headers)) for _key, value, headers in rows]
        if self.transport == "kinesis":
            from consumers.tenancy import kinesis_stream
            from consumers.transports.kinesis import read_stream

            rows = read_stream(settings, kinesis_stream(kind, tenant), idle=0.5, timeout=10)
            return [(value, list(headers)) for _key, value, headers in rows]
        if self.transport == "memory":
            from consumers.transports.registry import read_verdicts

            rows = read_verdicts(settings, tenant, dead_letters=kind == "dlq")
            return [(value, list(headers)) for _key, value, headers in rows]
        from consumers.tenancy import pubsub_subscription
        from consumers.transports.pubsub import read_subscription, verdict_subscription

        name = verdict_subscription(tenant) if kind == "verdicts" else pubsub_subscription(tenant, "dlq")
        seen = self._seen.setdefault((tenant, kind), [])
        seen += [
            (value, list(headers)) for _key, value, headers in read_subscription(settings, name, idle=0.5)
        ]
        return list(seen)

    def verdicts(self, settings: Settings, tenant: str) -> dict[str, list[dict[str, Any]]]:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for value, _headers in self.read(settings, tenant, "verdicts"):
            verdict = json.loads(value)
            by_key.setdefault(verdict["idempotency_key"], []).append(verdict)
        return by_key

    def wait_for_verdicts(
        self, settings: Settings, keys: list[str], timeout: float = 120.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Read every tenant's verdicts until each key has one (or `timeout`)."""
        deadline = time.monotonic() + timeout
        found: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            found = {}
            for tenant in settings.tenants:
                found.update(self.verdicts(settings, tenant))
            if all(k in found for k in keys):
                return found
            for worker in self.workers:
                failure = worker.failure()
                if failure is not None:
                    raise AssertionError(failure)
            time.sleep(0.5)
        missing = [k for k in keys if k not in found]
        raise AssertionError(
            f"{len(missing)} of {len(keys)} arrivals got no verdict in {timeout:.0f}s: {missing[:5]}"
        )

    # -- workers -------------------------------------------------------------------------

    def start_worker(
        self, settings: Settings, *, die_before_ack: bool = False, **extra_env: str
    ) -> WorkerProcess | ThreadWorker:
        """A worker for `settings`: an `audioguard worker` process, or, on a transport that lives
        inside this process, the same worker on a thread (`extra_env` does not apply there).
        `die_before_ack`: the process SIGKILLs itself when it first acks (tests.support.die_before_ack)."""
        if TRANSPORTS[self.transport].in_process:
            assert self.detector is not None
            thread_worker = ThreadWorker(settings, self.detector())
            self.workers.append(thread_worker)
            return thread_worker
        log = self.workdir / f"worker-{settings.tenants[0]}-{len(self.workers)}.log"
        program = Path(sys.executable).parent / "audioguard"
        command = [str(program)] if program.exists() else [sys.executable, "-m", "services.cli"]
        if die_before_ack:
            command = [sys.executable, "-m", "tests.support.die_before_ack"]
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it
        metrics_port = free_port()
        process = subprocess.Popen(
            [*command, "worker", "--transport", self.transport],
            env=self.worker_env(settings, AUDIOGUARD_METRICS_PORT=str(metrics_port), **extra_env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        worker = WorkerProcess(process, log, metrics_port)
        self.workers.append(worker)
        return worker

    def forget_dead_connections(self, settings: Settings) -> None:
        """Make the server drop a killed worker's streams, as the real service does.

        Pub/Sub emulator 0.8.20 only; nothing to do for Tansu or moto. The emulator never
        learns that a streaming pull ended (its gRPC server fails with a NoSuchMethodError
        while delivering the cancellation), so the dead stream's pusher thread keeps taking
        messages from the backlog every 50 ms. Each message it takes is lost for another
        ack deadline, and since a lease expires a fixed time after the pusher took it, the
        same dead pusher tends to win the next race too: arrivals of one tenant went ten
        deadlines and more without reaching the live successor (docs/guarantees.md,
        "Time to redelivery"). Real Pub/Sub closes the stream with its connection. The
        pusher ends when it finds its subscription turned into a push subscription, so the
        subscription is switched to push and back; no message is touched (every unacked
        one is still leased to the dead stream and returns at its deadline)."""
        if self.transport != "pubsub":
            return
        from google.cloud import pubsub_v1

        from consumers.tenancy import pubsub_subscription

        os.environ["PUBSUB_EMULATOR_HOST"] = self.endpoint
        subscriber = pubsub_v1.SubscriberClient()
        paths = [
            subscriber.subscription_path(settings.pubsub.project_id, pubsub_subscription(t, "arrivals"))
            for t in settings.tenants
        ]
        try:
            # port 9 (discard) on loopback: nothing listens, so a push could never succeed
            for path in paths:
                subscriber.modify_push_config(
                    request={"subscription": path, "push_config": {"push_endpoint": "http://127.0.0.1:9/"}}
                )
            time.sleep(0.5)  # each pusher checks its subscription between two 50 ms polls
            for path in paths:
                subscriber.modify_push_config(request={"subscription": path, "push_config": {}})
        finally:
            subscriber.close()

    def redelivery_bound(self, settings: Settings) -> float:
        """Seconds after a worker's SIGKILL by which the transport hands the arrivals it held
        to a live successor, from the settings that govern it: the bounds of
        docs/guarantees.md, "Time to redelivery after a crash". The successor's own start
        (the model load) is not part of it: `wait_for_successor` waits for that on its own.

            kafka    session.timeout.ms (the coordinator drops the dead member), plus one
                     more session timeout for the rebalance that hands its partitions over
                     (Tansu holds a join for about half of it; the successor's own join
                     and sync)
            pubsub   one ack deadline: the dead worker's last lease extension asked for at
                     most `ack_deadline_seconds` (clamped to 10..600, as the adapter does)
            kinesis  no lease to expire: the successor reads after the checkpoint on its
                     first GetRecords, one `poll_interval_seconds` after it is ready;
                     with leases: the dead worker's leases expire `failover_seconds` after
                     its last renewal the successor saw, and the successor looks every
                     heartbeat (a third of it)
        """
        if self.transport == "kafka":
            return 2 * settings.kafka.session_timeout_ms / 1000
        if self.transport == "pubsub":
            return float(min(max(settings.pubsub.ack_deadline_seconds, 10), 600))
        if self.transport == "kinesis":
            if settings.kinesis.leases:
                return (
                    settings.kinesis.failover_seconds * (1 + 1 / 3) + settings.kinesis.poll_interval_seconds
                )
            return settings.kinesis.poll_interval_seconds
        raise AssertionError(f"{self.transport}: no worker process to kill, no redelivery bound")

    def wait_for_successor(
        self,
        settings: Settings,
        successor: WorkerProcess,
        killed_at: float,
        *,
        new_verdicts: int,
        duplicates: int,
        start_timeout: float = 120.0,
        margin: float = 60.0,
    ) -> Redelivery:
        """Wait until the successor of a SIGKILLed worker answered what the dead one left:
        `new_verdicts` arrivals that were never scored, and `duplicates` that the dead worker
        had scored but not acked (answered from the verdict store). Its counters come from
        its /metrics page.

        Two stated limits, never "soon": the successor must have loaded its model within
        `start_timeout` (the first worker had as long to store its first verdict), and must
        have answered by the transport's `redelivery_bound` after the later of the kill and
        its start, plus `margin` for scoring and publishing on a loaded machine. Returns
        when each stage happened, in seconds after the kill."""
        bound = self.redelivery_bound(settings)
        started_at: float | None = None
        first_at: float | None = None
        counts: dict[str, float] = {}
        deadline = time.time() + start_timeout
        while True:
            now = time.time()
            failure = successor.failure()
            if failure is not None:
                raise AssertionError(failure)
            counts = successor.counts()
            if started_at is None and successor.started():
                started_at = now
                deadline = max(killed_at + bound, started_at) + margin
            if first_at is None and counts.get("events_consumed", 0) > 0:
                first_at = now
            if counts.get("verdicts", 0) >= new_verdicts and counts.get("duplicates", 0) >= duplicates:
                assert started_at is not None and first_at is not None
                return Redelivery(bound, started_at - killed_at, first_at - killed_at, now - killed_at)
            if now > deadline:
                if started_at is None:
                    raise AssertionError(f"{self.transport}: no model loaded in {start_timeout:.0f}s")
                raise AssertionError(
                    f"{self.transport}: the successor had not answered {margin:.0f}s past the "
                    f"redelivery bound ({bound:.1f}s after the kill) and its start "
                    f"({started_at - killed_at:.1f}s after it): owed {new_verdicts} new verdicts and "
                    f"{duplicates} duplicates, counts {counts}"
                )
            time.sleep(0.2)

    def stored_keys(self, settings: Settings) -> set[str]:
        """Idempotency keys in the worker's SQLite verdict store (read-only)."""
        path = self.store_path(settings.tenants)
        if not path.exists():
            return set()
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
                return {
                    f"{tenant}:{key}" if not key.startswith(f"{tenant}:") else key
                    for tenant, key in db.execute("SELECT tenant, key FROM verdicts")
                }
        except sqlite3.OperationalError:
            return set()  # not created yet, or busy

    def close(self) -> None:
        for worker in self.workers:
            if isinstance(worker, ThreadWorker):
                worker.close()
            elif worker.alive():
                worker.kill()


class _InProcessBroker:
    """The memory transport's "server": a broker of this process, under a fresh name."""

    def __init__(self) -> None:
        self.name = f"contract-{uuid.uuid4().hex[:8]}"

    def stop(self) -> None:
        from consumers.transports.memory import forget_broker

        forget_broker(self.name)


def _start_server(transport: str, workdir: Path) -> tuple[Any, str]:
    if transport == "memory":
        broker = _InProcessBroker()
        return broker, broker.name
    if transport == "kafka":
        from services.local.broker import EmbeddedBroker

        broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
        return broker, broker.bootstrap_servers
    if transport == "pubsub":
        if shutil.which("gcloud") is None:
            pytest.skip("the gcloud SDK (Pub/Sub emulator) is not installed")
        from services.local.emulators import PubSubEmulator

        emulator = PubSubEmulator(log_path=workdir / "pubsub.log").start()
        return emulator, emulator.host_port
    from services.local.emulators import MotoServer

    moto = MotoServer(log_path=workdir / "moto.log").start()
    return moto, moto.endpoint_url


#: the transports, and Kinesis once more with its DynamoDB lease table on (several workers
#: may then share a stream; consumers.transports.kinesis_leases)
KINESIS_LEASES = "kinesis-leases"


@pytest.fixture(scope="session", params=[*TRANSPORTS, KINESIS_LEASES])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    variant = str(request.param)
    transport = "kinesis" if variant == KINESIS_LEASES else variant
    workdir = tmp_path_factory.mktemp(f"contract-{variant}")
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    running, endpoint = _start_server(transport, workdir)
    try:
        yield variant, endpoint, workdir
    finally:
        running.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        transport = callspec.params.get("server") if callspec is not None else None
        transport = "kinesis" if transport == KINESIS_LEASES else transport
        in_process = transport in TRANSPORTS and TRANSPORTS[str(transport)].in_process
        if item.get_closest_marker("cross_process") and in_process:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"not applicable to {transport}: its broker is in-process only, so a "
                    "worker in a process of its own (SIGKILLed here) cannot share it"
                )
            )


@pytest.fixture()
def harness(server: tuple[str, str, Path], request: pytest.FixtureRequest) -> Iterator[Harness]:
    variant, endpoint, workdir = server
    transport = "kinesis" if variant == KINESIS_LEASES else variant

    def detector() -> Any:
        # the session's shipped detector, loaded only when an in-process worker needs it
        return request.getfixturevalue("detector")

    running = Harness(transport, endpoint, workdir, detector=detector, leases=variant == KINESIS_LEASES)
    try:
        yield running
    finally:
        running.close()
