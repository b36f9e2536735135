"""`audioguard bench`: how fast each stage is alone, how close the pipeline gets, and sizing.

    a. stages alone: fetch+decode, front end (resample + windows), model forward at batch
       sizes 1..128; the slowest stage (at its best batch size) is this machine's limit
    b. the worker end to end on the embedded broker at saturation (a pre-published backlog),
       as a ratio to that limit, with the default batch policy and with fixed batch sizes
    c. the same backlog through a naive consumer (poll one, score one, produce, commit
       synchronously), as a ratio; and both consumers' p99 at the same open-loop rate; beside
       it a from-scratch loop (poll one, read, decode, produce, flush, commit) and the decode
       stage alone on 1 and 2 threads: what a loop with no framework at all does here
    d. an open-loop load generator (Poisson arrivals, several tenants) stepping the offered
       rate up to the breaking point: a rich table and a PNG plot of latency vs throughput
    e. a sizing recommendation: workers needed for a target rate at a target p99
    f. every core: the model forward alone on 1 and 2 torch threads, and `audioguard worker`
       (today's single process) against `worker --processes N` for each N, as processes of
       their own on a pre-published backlog; interleaved repeats, min / median / max

Parts a-e run in this process against a real broker (Tansu unless --bootstrap-servers),
real files and the shipped detector. It prints numbers and writes them (JSON, PNG) under
--out; it never asserts a time. It must never be imported by the worker, and never import
torch itself (the detector does).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BenchConfig", "BenchResult", "run_bench"]


# -- results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cores: int
    torch_threads: int
    device: str
    load_average: tuple[float, float, float]
    python: str


@dataclass(frozen=True)
class Stage:
    name: str
    uploads_per_second: float
    note: str = ""


@dataclass(frozen=True)
class Saturation:
    label: str
    events: int
    seconds: float
    rate: float
    mean_batch_windows: float = 0.0
    final_cap: int = 0  # the batch cap at the end (the tuner's choice when adaptive)
    #: completions per second over the last three quarters: without the group join, the first
    #: batches and the tuner's initial sweep, which a long-running worker pays once
    steady_rate: float = 0.0
    #: CPU seconds per wall second from the first record consumed to the last verdict: of the
    #: bench process (the consumer's threads; the bench's own threads only sleep then) and of
    #: the embedded broker's process (nan when the broker is not ours)
    cores: float = float("nan")
    broker_cores: float = float("nan")


#: the columns of a saturation table, console and report alike (saturation_row)
SATURATION_COLUMNS = (
    "run",
    "events",
    "seconds",
    "uploads/s",
    "steady/s",
    "mean windows/batch",
    "final cap",
    "cores: consumer / broker",
)


def saturation_row(run: Saturation) -> tuple[str, ...]:
    return (
        run.label,
        str(run.events),
        f"{run.seconds:.2f}",
        f"{run.rate:.1f}",
        f"{run.steady_rate:.1f}",
        f"{run.mean_batch_windows:.1f}",
        str(run.final_cap),
        f"{run.cores:.2f} / {run.broker_cores:.2f}",
    )


@dataclass(frozen=True)
class ProcessRun:
    """One saturation run of `audioguard worker` as processes of its own (part f)."""

    label: str
    #: worker processes; 0 = the plain `audioguard worker`, no supervisor
    processes: int
    torch_threads: int
    events: int
    #: first verdict -> last verdict, as read back from the verdict topic
    seconds: float
    rate: float
    steady_rate: float


@dataclass(frozen=True)
class LoadPoint:
    consumer: str
    offered: float
    achieved: float
    published: int
    completed: int
    p50: float
    p99: float
    #: median seconds of each of LEGS (pipeline only; empty for the naive consumer)
    legs_p50: tuple[float, ...] = ()


@dataclass
class BenchResult:
    machine: Machine
    clip_seconds: float
    windows_per_upload: int
    forward: dict[int, float] = field(default_factory=dict)  # batch size -> windows/s
    stages: list[Stage] = field(default_factory=list)
    limit: Stage | None = None
    pipeline: Saturation | None = None
    fixed_batches: list[Saturation] = field(default_factory=list)
    naive: Saturation | None = None
    #: poll one, read, decode, produce, flush, commit synchronously: no parse, no steps
    scratch: Saturation | None = None
    #: read + soundfile decode of the clips alone, on 1 and 2 threads (files/s)
    decode: list[Stage] = field(default_factory=list)
    curve: list[LoadPoint] = field(default_factory=list)
    naive_point: LoadPoint | None = None
    pipeline_point: LoadPoint | None = None
    #: `--only same-rate`: naive, pipeline, naive, pipeline, ... at one rate, in the order run
    same_rate: list[LoadPoint] = field(default_factory=list)
    breaking_rate: float | None = None
    sizing: dict[str, Any] = field(default_factory=dict)
    cold_start: list[dict[str, float]] = field(default_factory=list)
    #: part f: torch threads -> the forward pass's best windows/s alone, per interleaved round
    forward_threads: dict[int, list[float]] = field(default_factory=dict)
    #: part f: every run, in the order they ran (interleaved)
    process_runs: list[ProcessRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what the run was: UTC start, the scorer, the load average when it ended
    started_at: str = ""
    scorer: str = "model"
    load_average_end: tuple[float, float, float] | None = None
    #: wall-clock seconds of each part, in the order they ran (the report sizes the bench by it)
    part_seconds: dict[str, float] = field(default_factory=dict)
    #: RSS of a worker process under a 10x flood (services.tools.loadtest.OverloadResult as a dict)
    overload: dict[str, Any] | None = None

    def saturation_runs(self) -> list[Saturation]:
        """The pipeline, its fixed batch sizes, the naive consumer and the from-scratch loop."""
        kinds = (self.pipeline, *self.fixed_batches, self.naive, self.scratch)
        return [r for r in kinds if r is not None]

    def process_summary(self) -> dict[str, dict[str, float]]:
        """min / median / max steady uploads/s of each part-f variant."""
        out: dict[str, dict[str, float]] = {}
        for label in dict.fromkeys(r.label for r in self.process_runs):
            rates = [r.steady_rate for r in self.process_runs if r.label == label]
            out[label] = {
                "runs": len(rates),
                "min": min(rates),
                "median": float(np.median(rates)),
                "max": max(rates),
            }
        return out

    def ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        # steady rates: what a long-running worker sustains (see Saturation.steady_rate)
        if self.pipeline and self.limit:
            out["end_to_end / slowest stage"] = self.pipeline.steady_rate / self.limit.uploads_per_second
        if self.pipeline and self.naive:
            out["end_to_end / naive"] = self.pipeline.steady_rate / self.naive.steady_rate
        if self.pipeline and self.fixed_batches:
            best = max(s.steady_rate for s in self.fixed_batches)
            out["default batch policy / best fixed batch"] = self.pipeline.steady_rate / best
        if self.pipeline and self.scratch:
            out["end_to_end / from-scratch loop"] = self.pipeline.steady_rate / self.scratch.steady_rate
        if self.pipeline and self.decode:
            fastest = max(s.uploads_per_second for s in self.decode)
            out["end_to_end / decode alone (fastest)"] = self.pipeline.steady_rate / fastest
        summary = self.process_summary()
        one, two = summary.get(process_label(1)), summary.get(process_label(2))
        today = summary.get(process_label(0))
        if one and two:
            out["2 processes / 1 process (medians)"] = two["median"] / one["median"]
        if today and two:
            out["2 processes / today's one-process worker (medians)"] = two["median"] / today["median"]
        both = max(self.forward_threads.get(2, [0.0]))
        if two and both > 0 and self.windows_per_upload:
            out["2 processes / forward alone on 2 threads"] = two["median"] / (both / self.windows_per_upload)
        return out


@dataclass(frozen=True)
class BenchConfig:
    smoke: bool = False
    bootstrap_servers: str | None = None
    device: str = "auto"
    threads: int | None = None
    # "null": constant scores at no cost (services.detector.null), to see the framework's own ceiling
    scorer: str = "model"
    clip_seconds: float = 12.0
    events: int = 400
    phase_seconds: float = 12.0
    tenants: int = 3
    target_rate: float = 100.0
    target_p99: float = 2.0
    out: Path = Path("bench-out")
    forward_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    fixed_batch_windows: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    load_fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.75, 0.9, 1.0, 1.1, 1.25)
    stage_seconds: float = 2.0
    session_timeout_ms: int = 6000
    cold_starts: int = 3
    repeats: int = 2
    #: the ceiling only: stages, saturation runs and the same-rate point (no open-loop curve,
    #: no cold start)
    ceiling_only: bool = False
    #: part f: `worker --processes N` for each N (plus the plain worker when process_baseline)
    processes: tuple[int, ...] = (1, 2)
    process_baseline: bool = True
    process_events: int = 800
    process_repeats: int = 3
    forward_threads: tuple[int, ...] = (1, 2)
    #: "processes": part f alone (the in-process parts a-e take minutes); "same-rate": the
    #: naive consumer and the pipeline at one open-loop rate, `repeats` interleaved pairs
    only: str | None = None
    #: the same-rate point's uploads/s (None: 0.7x the naive consumer's measured capacity)
    rate: float | None = None
    #: seconds of 10x flood on a worker process for RSS (services.tools.loadtest.overload; 0: skip)
    overload_seconds: float = 20.0

    @classmethod
    def smoke_run(cls, **overrides: Any) -> BenchConfig:
        values: dict[str, Any] = {
            "smoke": True,
            "clip_seconds": 4.0,
            "events": 12,
            "phase_seconds": 1.5,
            "tenants": 2,
            "forward_batches": (1, 4, 16),
            "fixed_batch_windows": (4,),
            "load_fractions": (0.5, 1.25),
            "stage_seconds": 0.3,
            "session_timeout_ms": 2000,
            "cold_starts": 0,
            "repeats": 1,
            "processes": (2,),
            "process_baseline": False,
            "process_events": 12,
            "process_repeats": 1,
            "overload_seconds": 0.0,
        }
        values.update(overrides)
        return cls(**values)


# -- helpers --------------------------------------------------------------------------------
def machine_info(torch_threads: int, device: str) -> Machine:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Machine(
        cpu_model=model,
        cores=os.cpu_count() or 1,
        torch_threads=torch_threads,
        device=device,
        load_average=load_average(),
        python=platform.python_version(),
    )


def make_clip(seconds: float, seed: int, rate: int = 16000) -> bytes:
    """A voiced-ish WAV: any decodable audio works, the detector's cost is per window."""
    import io
    import wave

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = 120 + 80 * rng.random()
    samples = 0.3 * np.sin(2 * np.pi * pitch * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    samples = samples + 0.03 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc); nan when unknown."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # after the command's closing bracket: state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def timed_rate(fn: Callable[[], int], seconds: float, min_calls: int = 2) -> float:
    """Items per second of `fn` (which returns how many items it did), over about `seconds`."""
    fn()  # warm
    started = time.perf_counter()
    items = calls = 0
    while calls < min_calls or time.perf_counter() - started < seconds:
        items += fn()
        calls += 1
    return items / (time.perf_counter() - started)


@contextmanager
def _progress(smoke: bool) -> Iterator[Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=True,
        disable=smoke,
    ) as progress:
        yield progress


# -- the rig --------------------------------------------------------------------------------
class Rig:
    """A broker, a directory of clips, the detector; makes fresh tenants per run."""

    def __init__(
        self, config: BenchConfig, bootstrap: str, workdir: Path, detector: Any, broker_pid: int | None = None
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.detector = detector
        #: the embedded broker's pid, for its CPU share in the saturation runs; None when external
        self.broker_pid = broker_pid
        self._sink: Any | None = None
        self.clips: list[tuple[str, bytes]] = []
        clip_dir = workdir / "clips"
        clip_dir.mkdir(parents=True, exist_ok=True)
        for i in range(8):
            data = make_clip(config.clip_seconds, seed=i)
            path = clip_dir / f"clip-{i}.wav"
            path.write_bytes(data)
            self.clips.append((f"file://{path}", data))

    def settings(self, tenants: list[str], **overrides: Any) -> Any:
        from services.settings import KafkaSettings, Settings, StorageSettings, StoreSettings

        values: dict[str, Any] = {
            "tenants": tenants,
            "device": self.config.device,
            # a short session: Tansu delays a group's first join by about half of it, and every
            # run here is a fresh group
            "kafka": KafkaSettings(
                bootstrap_servers=self.bootstrap,
                group_id=f"bench-{tenants[0]}",
                session_timeout_ms=self.config.session_timeout_ms,
                heartbeat_interval_ms=500,
            ),
            # every tenant reads the shared clip folder: the bench measures work, not copies
            "storage": StorageSettings(tenant_file_roots={t: [self.workdir / "clips"] for t in tenants}),
            "store": StoreSettings(url="memory://"),
            "drain_seconds": 10.0,
            "log_level": "WARNING",
        }
        values.update(overrides)
        return Settings(**values)

    def tenants(self, count: int, partitions: int = 1) -> list[str]:
        from consumers.transports.kafka import create_topics, tenant_topics

        suffix = uuid.uuid4().hex[:6]
        names = [f"bench{i}-{suffix}" for i in range(count)]
        from services.settings import KafkaSettings

        create_topics(
            KafkaSettings(bootstrap_servers=self.bootstrap), tenant_topics(names), partitions=partitions
        )
        return names

    def worker_env(self, tenants: list[str], group: str) -> dict[str, str]:
        """The environment of `audioguard worker` started as a process on this rig."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOGUARD_")}
        env.update(
            AUDIOGUARD_TENANTS=json.dumps(tenants),
            AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            AUDIOGUARD_KAFKA__GROUP_ID=group,
            AUDIOGUARD_KAFKA__SESSION_TIMEOUT_MS=str(self.config.session_timeout_ms),
            AUDIOGUARD_KAFKA__HEARTBEAT_INTERVAL_MS="500",
            AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS=json.dumps(
                {t: [str(self.workdir / "clips")] for t in tenants}
            ),
            AUDIOGUARD_DEVICE=self.config.device,
            AUDIOGUARD_LOG_LEVEL="WARNING",
        )
        if self.config.threads is not None:
            env["AUDIOGUARD_TORCH_THREADS"] = str(self.config.threads)
        return env

    def sink(self) -> Any:
        """The platform's producer, one for the whole bench and connected before any step is
        timed: a fresh producer per open-loop step put its ~1.3 s of connection and metadata
        set-up into the first arrivals' latency (the p99 of every low-rate step was that)."""
        if self._sink is None:
            from consumers.transports.kafka import KafkaSink
            from services.settings import KafkaSettings

            self._sink = KafkaSink(KafkaSettings(bootstrap_servers=self.bootstrap))
        return self._sink

    def arrival(self, tenant: str, index: int) -> Any:
        from consumers.transport import OutRecord
        from services.platform import arrival_for

        uri, data = self.clips[index % len(self.clips)]
        key = f"{tenant}:{index}-{uuid.uuid4().hex[:8]}"
        value = arrival_for(tenant, uri, data, key=key, content_id=f"c{index}")
        return OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value)

    def backlog(self, tenants: list[str], events: int) -> None:
        sink = self.sink()
        futures = [sink.publish(self.arrival(tenants[i % len(tenants)], i)) for i in range(events)]
        sink.flush(60)
        for future in futures:
            future.result(60)


#: the legs of one upload's latency, in order (the pipeline's; the naive consumer has none)
LEGS = (
    "publish -> admitted (producer, broker, consumer fetch)",
    "admitted -> scoring starts (fetch+decode, batch wait, scorer busy)",
    "scoring (the batch it rode in)",
    "scored -> committed (verdict, store, publish, commit)",
)


class Recorder:
    """Latency of every verdict: done wall time - the arrival's submitted_at; for the pipeline
    also the legs of it (LEGS), so a latency is never a number without a reason."""

    def __init__(self, broker_pid: int | None = None) -> None:
        self.lock = threading.Lock()
        self.first_consumed: float | None = None
        #: (process CPU seconds, broker CPU seconds) when the first record was consumed
        self.cpu_at_first: tuple[float, float] | None = None
        self.broker_pid = broker_pid
        self.done_at: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.legs: dict[str, tuple[float, ...]] = {}

    def consumed(self) -> None:
        if self.first_consumed is None:
            self.first_consumed = time.monotonic()
            self.cpu_at_first = (time.process_time(), process_cpu_seconds(self.broker_pid))

    def cores(self) -> tuple[float, float]:
        """(this process, the broker) CPU seconds per wall second since the first record."""
        if self.first_consumed is None or self.cpu_at_first is None:
            return float("nan"), float("nan")
        wall = time.monotonic() - self.first_consumed
        own = (time.process_time() - self.cpu_at_first[0]) / wall
        broker = (process_cpu_seconds(self.broker_pid) - self.cpu_at_first[1]) / wall
        return own, broker

    def finished(self, key: str, submitted_at: datetime, work: Any = None) -> None:
        now, done = datetime.now(UTC), time.monotonic()
        latency = (now - submitted_at).total_seconds()
        with self.lock:
            self.done_at[key] = done
            self.latency[key] = latency
            if work is not None and work.scoring_started is not None:
                in_worker = done - work.admitted_at
                waited = work.scoring_started - work.admitted_at
                self.legs[key] = (
                    latency - in_worker,
                    waited,
                    work.scoring_seconds,
                    in_worker - waited - work.scoring_seconds,
                )

    def count(self) -> int:
        return len(self.done_at)


def _recording_hooks(detector: Any, recorder: Recorder, max_windows: int) -> Any:
    from consumers.instrumentation import PipelineHooks

    class RecordingHooks(PipelineHooks):
        batch_windows: list[int]

        def consumed(self, work: Any) -> None:
            recorder.consumed()
            super().consumed(work)

        def batch_scored(self, batch: list[Any], seconds: float) -> None:
            self.batch_windows.append(sum(len(w.windows) for w in batch if w.windows is not None))
            super().batch_scored(batch, seconds)

        def done(self, work: Any) -> None:
            if work.arrival is not None:
                recorder.finished(work.arrival.idempotency_key, work.arrival.submitted_at, work)
            super().done(work)

    hooks: Any = RecordingHooks.for_detector(detector, max_windows=max_windows)
    hooks.batch_windows = []
    return hooks


class WorkerThread:
    """The real worker (services.tools.worker.build_worker) on a thread of this process."""

    def __init__(
        self, rig: Rig, tenants: list[str], batch: Any | None = None, overrides: dict[str, Any] | None = None
    ) -> None:
        from services.tools.worker import build_worker

        overrides = dict(overrides or {}) | ({"batch": batch} if batch is not None else {})
        settings = rig.settings(tenants, **overrides)
        self.recorder = Recorder(rig.broker_pid)
        self.hooks = _recording_hooks(rig.detector, self.recorder, settings.batch.max_windows)
        self.worker = build_worker(settings, detector=rig.detector, hooks=self.hooks)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-worker")

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as error:  # noqa: BLE001 - reported by the bench
            self.error = error

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


class NaiveThread:
    """Consume one, fetch+decode, score, publish the verdict, wait for it, commit synchronously."""

    def __init__(self, rig: Rig, tenants: list[str]) -> None:
        from consumers.transports.registry import open_transport

        self.rig = rig
        self.settings = rig.settings(tenants)
        self.source, self.sink = open_transport(self.settings)
        self.recorder = Recorder(rig.broker_pid)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-naive")

    def _one(self, message: Any) -> None:
        from consumers.steps import parse_arrival
        from consumers.transport import OutRecord
        from services.audio import decode_with_limits
        from services.storage import AudioStorage

        storage = getattr(self, "_storage", None) or AudioStorage(self.settings.storage)
        self._storage = storage
        arrival = parse_arrival(message, self.settings.limits.max_event_bytes)
        data = storage.fetch(arrival.audio_uri, message.tenant, expected_sha256=arrival.sha256)
        audio = decode_with_limits(data, self.settings.limits)
        detector = self.rig.detector
        windows = detector.windows(audio.samples, audio.sample_rate)
        # the worker's decision, speech check included, so the baseline does the same work per upload
        decision = detector.decide(
            detector.score_windows(windows), detector.speech(windows), audio.duration_seconds
        )
        verdict = json.dumps(
            {"idempotency_key": arrival.idempotency_key, "label": decision.label, "score": decision.score}
        ).encode()
        record = OutRecord(
            tenant=message.tenant, destination="verdicts", key=arrival.idempotency_key.encode(), value=verdict
        )
        future = self.sink.publish(record)
        self.sink.flush(30)
        future.result(30)
        self.source.ack([message.token])  # KafkaSource commits synchronously
        self.recorder.finished(arrival.idempotency_key, arrival.submitted_at)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                for message in self.source.poll(1, 0.05):
                    self.recorder.consumed()
                    self._one(message)
        except BaseException as error:  # noqa: BLE001
            self.error = error
        finally:
            self.source.close(10)

    def __enter__(self) -> NaiveThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


class ScratchThread(NaiveThread):
    """The from-scratch loop: poll one, read the file, decode, produce, flush, commit
    synchronously. No pydantic parse, no checksum, no storage layer, no windows, no scorer:
    the least a correct at-least-once consumer does per upload with these clients."""

    def _one(self, message: Any) -> None:
        from urllib.parse import urlparse

        from consumers.transport import OutRecord
        from services.audio import decode_with_limits

        event = json.loads(message.value)
        audio = decode_with_limits(Path(urlparse(event["audio_uri"]).path).read_bytes(), self.settings.limits)
        key = event["idempotency_key"]
        verdict = json.dumps({"idempotency_key": key, "seconds": audio.duration_seconds}).encode()
        future = self.sink.publish(
            OutRecord(tenant=message.tenant, destination="verdicts", key=key.encode(), value=verdict)
        )
        self.sink.flush(30)
        future.result(30)
        self.source.ack([message.token])
        self.recorder.finished(key, datetime.fromisoformat(event["submitted_at"]))


def _wait(consumer: WorkerThread | NaiveThread, count: int, timeout: float, progress: Any = None) -> bool:
    deadline = time.monotonic() + timeout
    task = progress.add_task("  waiting for verdicts", total=count) if progress is not None else None
    while time.monotonic() < deadline:
        if consumer.error is not None:
            raise consumer.error
        done = consumer.recorder.count()
        if task is not None:
            progress.update(task, completed=done)
        if done >= count:
            if task is not None:
                progress.remove_task(task)
            return True
        time.sleep(0.02)
    if task is not None:
        progress.remove_task(task)
    return False


# -- a. stages alone ------------------------------------------------------------------------
def bench_stages(rig: Rig, result: BenchResult, progress: Any) -> None:
    from services.audio import decode_with_limits
    from services.storage import AudioStorage

    config, detector = rig.config, rig.detector
    tenant = "bench-stages"
    settings = rig.settings([tenant])
    storage = AudioStorage(settings.storage)
    uri, data = rig.clips[0]
    sha = hashlib.sha256(data).hexdigest()
    limits = settings.limits

    def fetch_decode() -> int:
        audio = decode_with_limits(storage.fetch(uri, tenant, expected_sha256=sha), limits)
        return 1 if audio.samples.size else 0

    audio = decode_with_limits(data, limits)

    def front_end() -> int:
        return 1 if len(detector.windows(audio.samples, audio.sample_rate)) else 0

    upload_windows = detector.windows(audio.samples, audio.sample_rate)

    def speech_check() -> int:
        # the worker runs it on the fetch threads, one upload's windows per call
        detector.speech(upload_windows)
        return 1

    rounds = config.repeats
    task = progress.add_task("a. stages alone", total=rounds * (2 + len(config.forward_batches)))
    per_upload = len(upload_windows)
    result.windows_per_upload = per_upload
    rng = np.random.default_rng(0)
    fetch_rate = front_rate = speech_rate = 0.0
    has_speech_check = detector.speech(upload_windows) is not None
    # best of `rounds` interleaved rounds: on a shared machine the least disturbed one is
    # the closest to what the stage can do
    for _ in range(rounds):
        fetch_rate = max(fetch_rate, timed_rate(fetch_decode, config.stage_seconds))
        progress.advance(task)
        front_rate = max(front_rate, timed_rate(front_end, config.stage_seconds))
        progress.advance(task)
        if has_speech_check:
            speech_rate = max(speech_rate, timed_rate(speech_check, config.stage_seconds))
        for size in config.forward_batches:
            batch = (0.1 * rng.standard_normal((size, detector.meta.window_samples))).astype(np.float32)

            def forward(windows: np.ndarray = batch) -> int:
                return len(detector.score_windows(windows))

            rate = timed_rate(forward, config.stage_seconds, min_calls=2)
            result.forward[size] = max(result.forward.get(size, 0.0), rate)
            progress.advance(task)
    progress.remove_task(task)
    best = max(result.forward, key=lambda k: result.forward[k])
    result.stages = [
        Stage("fetch+decode (1 thread)", fetch_rate),
        Stage("front end: resample + windows", front_rate),
        Stage(
            f"model forward (best batch {best})",
            result.forward[best] / per_upload,
            f"{result.forward[best]:.1f} windows/s, {per_upload} window(s) per upload",
        ),
    ]
    if has_speech_check:
        result.stages.insert(2, Stage("speech check (VAD, 1 thread)", speech_rate, "on the fetch threads"))
    # the stages run on threads of their own, so each alone bounds the rate; together they
    # also share the cores: all of them at once can go no faster than cores / their summed cost
    cores = result.machine.cores
    summed = cores / sum(1.0 / s.uploads_per_second for s in result.stages if s.uploads_per_second > 0)
    result.stages.append(
        Stage(
            f"all stages above on {cores} core(s)", summed, "cores / the sum of each stage's cost per upload"
        )
    )
    result.limit = min(result.stages, key=lambda s: s.uploads_per_second)


def bench_decode(rig: Rig, result: BenchResult) -> None:
    """Read + decode of the clips alone, on 1 and 2 threads: soundfile and numpy release the
    GIL, so this is the most any consumer in one process can decode here."""
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlparse

    from services.audio import decode_with_limits
    from services.settings import LimitsSettings

    limits = LimitsSettings()
    paths = [Path(urlparse(uri).path) for uri, _ in rig.clips]

    def one(path: Path) -> int:
        return 1 if decode_with_limits(path.read_bytes(), limits).samples.size else 0

    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            chunk = 16 * threads

            def some(pool: ThreadPoolExecutor = pool, chunk: int = chunk) -> int:
                return sum(pool.map(one, (paths[i % len(paths)] for i in range(chunk))))

            best = 0.0
            for _ in range(rig.config.repeats):
                best = max(best, timed_rate(some, rig.config.stage_seconds))
        result.decode.append(Stage(f"read + decode alone ({threads} thread(s))", best))


# -- b. / c. saturation ---------------------------------------------------------------------
def saturate(
    rig: Rig,
    label: str,
    events: int,
    progress: Any,
    batch: Any | None = None,
    overrides: dict[str, Any] | None = None,
) -> Saturation:
    tenants = rig.tenants(1)
    rig.backlog(tenants, events)
    with WorkerThread(rig, tenants, batch=batch, overrides=overrides) as running:
        if not _wait(running, events, timeout=60 + events, progress=progress):
            raise RuntimeError(f"{label}: only {running.recorder.count()}/{events} verdicts")
        recorder = running.recorder
        cores, broker_cores = recorder.cores()
        windows = running.hooks.batch_windows
        cap = running.worker.pipeline.batcher.policy.max_windows
    assert recorder.first_consumed is not None
    seconds = max(recorder.done_at.values()) - recorder.first_consumed
    mean_batch = float(np.mean(windows)) if windows else 0.0
    return Saturation(
        label, events, seconds, events / seconds, mean_batch, cap, steady(recorder), cores, broker_cores
    )


def saturate_naive(
    rig: Rig, events: int, progress: Any, kind: type[NaiveThread] = NaiveThread, label: str = "naive consumer"
) -> Saturation:
    tenants = rig.tenants(1)
    rig.backlog(tenants, events)
    with kind(rig, tenants) as running:
        if not _wait(running, events, timeout=60 + 2 * events, progress=progress):
            raise RuntimeError(f"{label}: only {running.recorder.count()}/{events} verdicts")
        recorder = running.recorder
        cores, broker_cores = recorder.cores()
    assert recorder.first_consumed is not None
    seconds = max(recorder.done_at.values()) - recorder.first_consumed
    return Saturation(label, events, seconds, events / seconds, 1.0, 1, steady(recorder), cores, broker_cores)


def steady(recorder: Recorder) -> float:
    return steady_rate(list(recorder.done_at.values()))


def steady_rate(done_at: list[float]) -> float:
    """Completions per second over the last three quarters of `done_at` (monotonic times)."""
    times = sorted(done_at)
    start = len(times) // 4
    span = times[-1] - times[start]
    return (len(times) - 1 - start) / span if span > 0 else float("nan")


# -- d. open loop ---------------------------------------------------------------------------
def open_loop(
    rig: Rig,
    consumer: WorkerThread | NaiveThread,
    tenants: list[str],
    rate: float,
    seconds: float,
    name: str,
    drain_timeout: float,
) -> LoadPoint:
    """Poisson arrivals at `rate`/s for `seconds`, spread over `tenants`; then wait for them."""
    sink = rig.sink()
    rng = random.Random(int(rate * 1000))
    keys: list[str] = []
    futures = []
    started = time.monotonic()
    next_at = started
    index = 0
    while True:
        next_at += rng.expovariate(rate)
        if next_at - started > seconds:
            break
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        record = rig.arrival(tenants[rng.randrange(len(tenants))], index)
        index += 1
        keys.append(record.key.decode())
        futures.append(sink.publish(record))
        sink.poll()
    sink.flush(30)
    for future in futures:
        future.result(30)
    recorder = consumer.recorder
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline:
        if consumer.error is not None:
            raise consumer.error
        with recorder.lock:
            if all(k in recorder.done_at for k in keys):
                break
        time.sleep(0.05)
    with recorder.lock:
        done = [k for k in keys if k in recorder.done_at]
        latencies = [recorder.latency[k] for k in done]
        legs = [recorder.legs[k] for k in done if k in recorder.legs]
        last = max((recorder.done_at[k] for k in done), default=started)
    # below capacity the last verdict lands just after the phase: achieved ~ offered; above it,
    # the backlog stretches the span and achieved ~ capacity
    achieved = len(done) / max(seconds, last - started)
    return LoadPoint(
        consumer=name,
        offered=rate,
        achieved=achieved,
        published=len(keys),
        completed=len(done),
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        legs_p50=tuple(float(np.median(column)) for column in zip(*legs, strict=True)) if legs else (),
    )


def bench_curve(rig: Rig, result: BenchResult, capacity: float, progress: Any) -> None:
    config = rig.config
    tenants = rig.tenants(config.tenants)
    task = progress.add_task("d. open-loop curve", total=len(config.load_fractions))
    with WorkerThread(rig, tenants) as worker:
        # the group join and first fetch are not part of any step's latency
        rig.backlog(tenants, len(tenants))
        _wait(worker, len(tenants), timeout=60)
        for fraction in config.load_fractions:
            rate = fraction * capacity
            point = open_loop(
                rig,
                worker,
                tenants,
                rate,
                config.phase_seconds,
                "pipeline",
                drain_timeout=30 + config.phase_seconds,
            )
            result.curve.append(point)
            progress.advance(task)
            # against what was published, not the nominal rate: at 10-20/s over a 12 s step the
            # Poisson count alone is 6-9 % off the rate one time in three
            published_rate = point.published / config.phase_seconds
            if point.completed < point.published or point.achieved < 0.9 * published_rate:
                result.breaking_rate = rate
                break
    progress.remove_task(task)


def bench_naive_point(rig: Rig, result: BenchResult, rate: float) -> None:
    """Both consumers at the same open-loop rate (below the naive one's capacity): p99 each."""
    config = rig.config
    for name in ("naive", "pipeline"):
        tenants = rig.tenants(config.tenants)
        consumer: WorkerThread | NaiveThread = (
            NaiveThread(rig, tenants) if name == "naive" else WorkerThread(rig, tenants)
        )
        with consumer:
            rig.backlog(tenants, len(tenants))
            _wait(consumer, len(tenants), timeout=60)
            point = open_loop(
                rig, consumer, tenants, rate, config.phase_seconds, name, 30 + config.phase_seconds
            )
        if name == "naive":
            result.naive_point = point
        else:
            result.pipeline_point = point


# -- f. every core: threads and processes -------------------------------------------------
def process_label(processes: int) -> str:
    return "worker (one process)" if processes == 0 else f"worker --processes {processes}"


def forward_on_threads(rig: Rig, threads: int, batches: tuple[int, ...] = (2, 4, 8, 16)) -> float:
    """The forward pass alone on `threads` torch threads: best windows/s over `batches`."""
    from services.detector import configure_torch_threads

    configure_torch_threads(threads)
    rng = np.random.default_rng(threads)
    best = 0.0
    for size in batches:
        batch = (0.1 * rng.standard_normal((size, rig.detector.meta.window_samples))).astype(np.float32)

        def forward(windows: np.ndarray = batch) -> int:
            return len(rig.detector.score_windows(windows))

        best = max(best, timed_rate(forward, rig.config.stage_seconds))
    return best


def process_run(rig: Rig, processes: int, events: int) -> ProcessRun:
    """`audioguard worker` (processes 0) or `worker --processes N` as processes of their own,
    on a pre-published backlog of `events` over 4 partitions; the rate is read back from the
    verdict topic (each upload's first verdict, at the time this process received it)."""
    import signal
    import subprocess
    import sys

    from consumers.tenancy import kafka_topic
    from consumers.transports.kafka import read_topic
    from services.settings import KafkaSettings

    (tenant,) = rig.tenants(1, partitions=4)
    rig.backlog([tenant], events)
    argv = [sys.executable, "-m", "services.cli", "worker", "--scorer", rig.config.scorer]
    if processes:
        argv += ["--processes", str(processes)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # what each child runs with: cores / N under the supervisor, else the detector's own default
    # (services.detector.configure_torch_threads: half the cores, at most 4)
    threads = rig.config.threads or (max(1, cores // processes) if processes else max(1, min(4, cores // 2)))
    log = rig.workdir / f"worker-{tenant}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv, env=rig.worker_env([tenant], f"procs-{tenant}"), stdout=subprocess.DEVNULL, stderr=err
        )
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 90 + events / 5

    def give_up() -> bool:
        return time.monotonic() > deadline or proc.poll() is not None

    try:
        records = read_topic(
            KafkaSettings(bootstrap_servers=rig.bootstrap),
            kafka_topic("verdicts", tenant),
            follow=True,
            stop=give_up,
        )
        for _key, value, _headers in records:
            seen.setdefault(json.loads(value)["idempotency_key"], time.monotonic())
            if len(seen) >= events or give_up():
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if len(seen) < events:
        raise RuntimeError(
            f"{process_label(processes)}: {len(seen)}/{events} verdicts; log: {log.read_text()[-2000:]}"
        )
    times = sorted(seen.values())
    seconds = times[-1] - times[0]
    return ProcessRun(
        label=process_label(processes),
        processes=processes,
        torch_threads=threads,
        events=events,
        seconds=seconds,
        rate=(events - 1) / seconds if seconds > 0 else float("nan"),
        steady_rate=steady_rate(times),
    )


def bench_processes(rig: Rig, result: BenchResult, progress: Any) -> None:
    """Part f, interleaved: each round measures the forward alone on every thread count, then
    runs every variant once, so a burst of someone else's load hits one run, not one kind."""
    from services.detector import configure_torch_threads

    config = rig.config
    variants = ([0] if config.process_baseline else []) + list(config.processes)
    per_round = len(config.forward_threads) + len(variants)
    task = progress.add_task("f. threads and processes", total=config.process_repeats * per_round)
    try:
        for _ in range(config.process_repeats):
            if config.scorer != "null":
                for threads in config.forward_threads:
                    result.forward_threads.setdefault(threads, []).append(forward_on_threads(rig, threads))
                    progress.advance(task)
            for processes in variants:
                result.process_runs.append(process_run(rig, processes, config.process_events))
                progress.advance(task)
    finally:
        configure_torch_threads(config.threads)  # what parts a-e ran with
        progress.remove_task(task)


# -- cold start ---------------------------------------------------------------------------
def cold_start(rig: Rig, runs: int) -> list[dict[str, float]]:
    """Start `audioguard worker --metrics-port` as a process; seconds until each readiness
    flag first holds (from /readyz's "not ready: ..." body) and until /readyz answers 200."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    results = []
    for _ in range(runs):
        tenants = rig.tenants(1)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        env = rig.worker_env(tenants, f"cold-{tenants[0]}")
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--metrics-port", str(port)]
            + ["--scorer", rig.config.scorer],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen: dict[str, float] = {}
        flags = ("model_loaded", "warmed_up", "transport_connected")
        try:
            deadline = started + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                        body, ok = answer.read().decode(), True
                except urllib.error.HTTPError as error:
                    body, ok = error.read().decode(), False
                except OSError:
                    time.sleep(0.02)
                    continue
                now = time.monotonic() - started
                seen.setdefault("health server up", now)
                for flag in flags:
                    if flag not in body:
                        seen.setdefault(flag, now)
                if ok:
                    seen["ready"] = now
                    break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        results.append({k: round(v, 2) for k, v in seen.items()})
    return results


# -- e. sizing ------------------------------------------------------------------------------
def sizing(result: BenchResult, target_rate: float, target_p99: float) -> dict[str, Any]:
    healthy = [p for p in result.curve if p.completed == p.published and p.p99 <= target_p99]
    if not healthy:
        return {
            "target_rate": target_rate,
            "target_p99": target_p99,
            "workers": None,
            "why": "no measured rate met the target p99 on this machine",
        }
    best = max(healthy, key=lambda p: p.achieved)
    per_worker = best.achieved
    workers = math.ceil(target_rate / per_worker)
    return {
        "target_rate": target_rate,
        "target_p99": target_p99,
        "per_worker_rate_at_p99": round(per_worker, 2),
        "measured_p99_there": round(best.p99, 3),
        "workers": workers,
        "workers_with_n_plus_1": workers + 1,
        "audio_hours_per_hour_per_worker": round(per_worker * result.clip_seconds, 1),
    }


# -- output ---------------------------------------------------------------------------------
def plot(result: BenchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [p.achieved for p in result.curve]
    left.plot(xs, [p.p50 for p in result.curve], "o-", label="p50")
    left.plot(xs, [p.p99 for p in result.curve], "s-", label="p99")
    if result.naive_point is not None:
        left.plot([result.naive_point.achieved], [result.naive_point.p99], "x", ms=10, label="naive p99")
    left.set_xlabel("achieved throughput (uploads/s)")
    left.set_ylabel("end-to-end latency (s)")
    left.set_yscale("log")
    left.set_title(f"latency vs throughput ({result.clip_seconds:g} s uploads)")
    left.grid(True, alpha=0.3)
    left.legend()
    offered = [p.offered for p in result.curve]
    right.plot(offered, xs, "o-", label="achieved")
    right.plot(offered, offered, "--", color="grey", label="offered")
    if result.limit is not None:
        right.axhline(result.limit.uploads_per_second, color="red", ls=":", label="slowest stage alone")
    right.set_xlabel("offered rate (uploads/s)")
    right.set_ylabel("achieved (uploads/s)")
    right.set_title("open-loop load")
    right.grid(True, alpha=0.3)
    right.legend()
    fig.suptitle(
        f"{result.machine.cpu_model} · {result.machine.cores} cores · torch threads "
        f"{result.machine.torch_threads} · {result.machine.device}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = result.machine
    console.print(
        f"[bold]machine[/bold]: {m.cpu_model}, {m.cores} cores, torch threads {m.torch_threads}, "
        f"device {m.device}, load average {m.load_average}; uploads of {result.clip_seconds:g} s "
        f"= {result.windows_per_upload} window(s)"
    )
    if result.stages:  # parts a-e ran (not `--only processes`)
        table = Table(title="a. model forward by batch size")
        table.add_column("batch", justify="right")
        table.add_column("windows/s", justify="right")
        table.add_column("ms/batch", justify="right")
        for size, rate in result.forward.items():
            table.add_row(str(size), f"{rate:.1f}", f"{1000 * size / rate:.1f}")
        console.print(table)
        table = Table(title="a. stages alone (uploads/s)")
        table.add_column("stage")
        table.add_column("uploads/s", justify="right")
        table.add_column("note")
        for stage in result.stages:
            mark = " [bold red]<- limit[/bold red]" if stage == result.limit else ""
            table.add_row(stage.name + mark, f"{stage.uploads_per_second:.1f}", stage.note)
        for stage in result.decode:
            table.add_row(stage.name, f"{stage.uploads_per_second:.1f}", "files/s, no framework")
        console.print(table)
        table = Table(title="b./c. saturation (pre-published backlog)")
        for column in SATURATION_COLUMNS:
            table.add_column(column, justify="right" if column != "run" else "left")
        for run in result.saturation_runs():
            table.add_row(*saturation_row(run))
        console.print(table)
        for name, ratio in result.ratios().items():
            console.print(f"  {name}: [bold]{ratio:.2f}x[/bold]")
        table = Table(title="d. open loop (Poisson, several tenants)")
        for column in ("consumer", "offered/s", "achieved/s", "published", "completed", "p50 s", "p99 s"):
            table.add_column(column, justify="right" if column != "consumer" else "left")
        points = [*result.curve, *(p for p in (result.naive_point, result.pipeline_point) if p is not None)]
        for p in points:
            table.add_row(
                p.consumer,
                f"{p.offered:.1f}",
                f"{p.achieved:.1f}",
                str(p.published),
                str(p.completed),
                f"{p.p50:.3f}",
                f"{p.p99:.3f}",
            )
        console.print(table)
        with_legs = [p for p in points if p.legs_p50]
        if with_legs:
            table = Table(title="d. where a pipeline upload's time goes (median ms of each leg)")
            table.add_column("leg")
            for p in with_legs:
                table.add_column(f"{p.offered:.0f}/s", justify="right")
            for i, leg in enumerate(LEGS):
                table.add_row(leg, *(f"{1000 * p.legs_p50[i]:.1f}" for p in with_legs))
            console.print(table)
        if result.breaking_rate is not None:
            console.print(f"  breaking point: offered {result.breaking_rate:.1f} uploads/s")
        console.print(f"[bold]e. sizing[/bold]: {json.dumps(result.sizing)}")
        for start in result.cold_start:
            console.print(f"cold start (s after process start): {json.dumps(start)}")
    if result.same_rate and not result.stages:  # `--only same-rate`
        if result.naive is not None:
            console.print(f"naive consumer at saturation: {result.naive.steady_rate:.1f} uploads/s (steady)")
        table = Table(title="same rate, interleaved pairs (latency = publish -> verdict committed)")
        for column in ("consumer", "offered/s", "achieved/s", "completed", "p50 s", "p99 s", *LEGS):
            table.add_column(column, justify="right" if column != "consumer" else "left")
        for p in result.same_rate:
            legs = [f"{1000 * leg:.1f} ms" for leg in p.legs_p50] or [""] * len(LEGS)
            table.add_row(
                p.consumer,
                f"{p.offered:.1f}",
                f"{p.achieved:.1f}",
                f"{p.completed}/{p.published}",
                f"{p.p50:.3f}",
                f"{p.p99:.3f}",
                *legs,
            )
        console.print(table)
        naive = [p.p99 for p in result.same_rate if p.consumer == "naive"]
        pipeline = [p.p99 for p in result.same_rate if p.consumer == "pipeline"]
        if naive and pipeline:
            console.print(
                f"  p99 pipeline / naive (medians of {len(pipeline)} pairs): "
                f"[bold]{float(np.median(pipeline)) / float(np.median(naive)):.2f}x[/bold]"
            )
    if result.forward_threads or result.process_runs:
        table = Table(title="f. every core: forward alone by torch threads (best batch, windows/s)")
        for column in ("threads", "min", "median", "max", "uploads/s (median)"):
            table.add_column(column, justify="right")
        for threads, rates in result.forward_threads.items():
            median = float(np.median(rates))
            per_upload = median / result.windows_per_upload if result.windows_per_upload else float("nan")
            table.add_row(
                str(threads), f"{min(rates):.1f}", f"{median:.1f}", f"{max(rates):.1f}", f"{per_upload:.1f}"
            )
        console.print(table)
        table = Table(title="f. every core: saturation, worker processes of their own (steady uploads/s)")
        for column in ("variant", "torch threads each", "runs", "min", "median", "max"):
            table.add_column(column, justify="right" if column != "variant" else "left")
        threads_of = {r.label: r.torch_threads for r in result.process_runs}
        for label, stats in result.process_summary().items():
            table.add_row(
                label,
                str(threads_of[label]),
                str(int(stats["runs"])),
                f"{stats['min']:.1f}",
                f"{stats['median']:.1f}",
                f"{stats['max']:.1f}",
            )
        console.print(table)
        for process_run_ in result.process_runs:
            console.print(
                f"  {process_run_.label}: {process_run_.events} events in {process_run_.seconds:.2f} s, "
                f"{process_run_.rate:.1f}/s, steady {process_run_.steady_rate:.1f}/s"
            )
        for name, ratio in result.ratios().items():
            if "process" in name:
                console.print(f"  {name}: [bold]{ratio:.2f}x[/bold]")
    for note in result.notes:
        console.print(f"  note: {note}")


# -- the run --------------------------------------------------------------------------------
def load_average() -> tuple[float, float, float]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return (round(load[0], 2), round(load[1], 2), round(load[2], 2))


@contextmanager
def _part(result: BenchResult, name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        result.part_seconds[name] = result.part_seconds.get(name, 0.0) + time.monotonic() - started


def run_bench(config: BenchConfig) -> BenchResult:
    from services.detector import configure_torch_threads, load_detector
    from services.local.broker import EmbeddedBroker

    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with ExitStack() as stack, _progress(config.smoke) as progress:
        bootstrap = config.bootstrap_servers
        broker_pid = None
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap, broker_pid = broker.bootstrap_servers, broker.pid
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="audioguard-bench-")))
        detector: Any
        if config.scorer == "null":
            from services.detector.null import load_null_scorer

            detector = load_null_scorer()
        else:
            detector = load_detector(device=config.device, threads=config.threads)
        threads = configure_torch_threads(config.threads)
        rig = Rig(config, bootstrap, workdir, detector, broker_pid)
        result = BenchResult(
            machine=machine_info(threads, detector.device),
            clip_seconds=config.clip_seconds,
            windows_per_upload=0,
            started_at=started_at,
            scorer=config.scorer,
        )
        _run_parts(config, rig, result, progress)
        result.load_average_end = load_average()
    return result


def _run_parts(config: BenchConfig, rig: Rig, result: BenchResult, progress: Any) -> None:
    from services.settings import BatchSettings, TenantSettings

    detector = rig.detector
    if config.only == "processes":
        clip = rig.clips[0][1]
        from services.audio import decode_with_limits
        from services.settings import LimitsSettings

        audio = decode_with_limits(clip, LimitsSettings())
        result.windows_per_upload = len(detector.windows(audio.samples, audio.sample_rate))
        with _part(result, "f. every core"):
            bench_processes(rig, result, progress)
        return
    if config.only == "same-rate":
        rate = config.rate
        with _part(result, "same rate"):
            if rate is None:
                result.naive = saturate_naive(rig, config.events, progress)
                rate = 0.7 * result.naive.steady_rate
            for _ in range(config.repeats):
                bench_naive_point(rig, result, rate)
                result.same_rate += [p for p in (result.naive_point, result.pipeline_point) if p is not None]
        return
    with _part(result, "a. stages alone"):
        bench_stages(rig, result, progress)
        bench_decode(rig, result)
    runs = 4 + len(config.fixed_batch_windows)
    task = progress.add_task("b./c. saturation runs", total=config.repeats * runs)
    best: dict[str, Saturation] = {}

    def keep(run: Saturation) -> None:
        if run.label not in best or run.steady_rate > best[run.label].steady_rate:
            best[run.label] = run
        progress.advance(task)

    # interleaved repeats, best of each: a burst of someone else's load hits one run, not one kind
    with _part(result, "b./c. saturation"):
        for _ in range(config.repeats):
            keep(saturate(rig, "pipeline (default: adaptive cap <= 32)", config.events, progress))
            for size in config.fixed_batch_windows:
                # a fixed size: released only when full (or after a long wait at the very end)
                fixed = BatchSettings(
                    max_windows=size, max_audio_seconds=1e9, max_wait_ms=250.0, adaptive=False
                )
                keep(saturate(rig, f"pipeline, fixed batch {size}", config.events, progress, fixed))
            # one tenant's caps out of the way: what the worker-wide bounds alone allow
            wide = {"tenant_defaults": TenantSettings(max_in_flight=1024, max_in_flight_audio_seconds=1e9)}
            keep(saturate(rig, "pipeline, tenant caps 1024", config.events, progress, overrides=wide))
            keep(saturate_naive(rig, max(4, config.events // 2), progress))
            keep(saturate_naive(rig, config.events, progress, ScratchThread, "from-scratch loop"))
    progress.remove_task(task)
    result.pipeline = best.pop("pipeline (default: adaptive cap <= 32)")
    result.naive = best.pop("naive consumer")
    result.scratch = best.pop("from-scratch loop")
    result.fixed_batches = list(best.values())
    if config.ceiling_only:
        with _part(result, "same rate"):
            bench_naive_point(rig, result, 0.7 * result.naive.rate)
        result.notes.append("--ceiling: no open-loop curve, no cold start")
        return
    capacity = max(result.pipeline.steady_rate, *(s.steady_rate for s in result.fixed_batches))
    with _part(result, "d. open-loop curve"):
        bench_curve(rig, result, capacity, progress)
    with _part(result, "same rate"):
        bench_naive_point(rig, result, 0.7 * result.naive.rate)
    result.sizing = sizing(result, config.target_rate, config.target_p99)
    if config.cold_starts:
        with _part(result, "cold start"):
            result.cold_start = cold_start(rig, config.cold_starts)
    if config.process_repeats:
        with _part(result, "f. every core"):
            bench_processes(rig, result, progress)
    if config.overload_seconds > 0:
        with _part(result, "RSS under 10x overload"):
            result.overload = bench_overload(rig, config.overload_seconds)
    result.notes.append(
        "everything (publisher, worker, broker) shares this machine; the open-loop publisher runs "
        "in the worker's process"
    )


def bench_overload(rig: Rig, seconds: float) -> dict[str, Any]:
    """A worker process under 10x its capacity for `seconds` on the bench's broker: RSS and
    what was lost (the sampling list is left out: the report prints the band)."""
    from dataclasses import asdict

    from services.tools.loadtest import overload

    run = asdict(
        overload(
            seconds=seconds,
            warmup=min(6.0, seconds / 3),
            flood_factor=10.0,
            clip_seconds=2.0,
            bootstrap=rig.bootstrap,
            capacity_events=150,
        )
    )
    run["rss_samples"] = len(run.pop("rss_samples_mb"))
    return run
