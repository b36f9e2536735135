"""The real worker on the in-memory transport, for unit tests that need no server.

`ConstantDetector` stands in for the model where its cost would only slow a test down: the
pipeline's behaviour (admission, batching, verdicts, commits) does not depend on what the
model answers. It is the bench's constant scorer idea, not a mock of a server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from consumers.runner import Pipeline, Worker
from consumers.tenancy import kafka_topic
from consumers.transports.memory import (
    MemoryBroker,
    MemorySink,
    forget_broker,
    open_memory,
    read_memory_topic,
    register_broker,
)
from services.detector._decision import Decision, decide
from services.platform import arrival_for
from services.settings import Settings
from services.storage import AudioStorage
from services.store import open_store
from services.tools.worker import dead_letter_writer
from tests.support.audio import encode, speechlike


@dataclass(frozen=True)
class ConstantMeta:
    name: str = "constant"
    version: str = "0.0.0"
    checksum: str = "0" * 64
    sample_rate: int = 16000
    window_seconds: float = 1.0
    threshold: float = 0.5


@dataclass
class ConstantDetector:
    """Cuts audio into 1 s windows and scores every window `score`; counts what it scored."""

    score: float = 0.9
    meta: ConstantMeta = field(default_factory=ConstantMeta)
    device: str = "cpu"
    windows_scored: int = 0

    def windows(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = samples if samples.ndim == 1 else samples.mean(axis=1)
        size = int(self.meta.window_seconds * sample_rate)
        count = max(1, -(-len(mono) // size))
        padded = np.zeros(count * size, dtype=np.float32)
        padded[: len(mono)] = mono
        return padded.reshape(count, size)

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        self.windows_scored += len(windows)
        return np.full(len(windows), self.score, dtype=np.float32)

    def speech(self, windows: np.ndarray) -> np.ndarray | None:
        return None  # no speech check: these tests are about the pipeline, not the audio

    def decide(
        self, scores: np.ndarray, speech: np.ndarray | None = None, duration_seconds: float | None = None
    ) -> Decision:
        # the production rule, with no inconclusive band: every upload gets a firm label
        return decide(scores, self.meta.threshold, 0.0, speech)


@contextmanager
def registered_broker(
    tenant: str | None = None, *, partitions: int = 1
) -> Iterator[tuple[str, MemoryBroker]]:
    """A fresh in-memory broker registered under a unique name (what `memory_settings` takes),
    with `tenant`'s arrivals, verdicts and dlq topics when one is given; forgotten afterwards."""
    name = f"unit-{uuid.uuid4().hex[:8]}"
    broker = register_broker(name, MemoryBroker())
    try:
        if tenant is not None:
            for kind in ("arrivals", "verdicts", "dlq"):
                broker.create_topic(kafka_topic(kind, tenant), partitions=partitions)
        yield name, broker
    finally:
        forget_broker(name)


def memory_settings(broker_name: str, tenants: list[str], audio_root: Path, **overrides: Any) -> Settings:
    """Settings of a worker on the in-process broker `broker_name`, audio under `audio_root/<tenant>`."""
    values: dict[str, Any] = {
        "transport": "memory",
        "tenants": tenants,
        "worker_id": f"unit-{uuid.uuid4().hex[:6]}",
        "memory": {"broker": broker_name, "group_id": "unit-workers"},
        "storage": {"tenant_file_roots": {t: [str(audio_root / t)] for t in tenants}},
        "store": {"url": "memory://"},
        "batch": {"max_windows": 8, "max_wait_ms": 1, "adaptive": False},
        "fetch_threads": 2,
        "drain_seconds": 5.0,
        "retry": {"attempts": 1, "initial_backoff_seconds": 0.001, "tier_delays_seconds": []},
    }
    values.update(overrides)
    return Settings(**values)


def build_memory_worker(
    settings: Settings,
    broker: MemoryBroker,
    detector: Any,
    *,
    member: str | None = None,
    shadow: Any = None,
    breaker: Any = None,
) -> Worker:
    """A Worker on `broker`, its revoke callback wired the way `build_worker` wires Kafka's."""
    handlers: list[Callable[[list[tuple[str, int]]], None]] = []

    def on_revoke(partitions: list[tuple[str, int]]) -> None:
        for handler in handlers:
            handler(partitions)

    source, sink = open_memory(settings, broker=broker, on_revoke=on_revoke, member=member)
    store = open_store(settings.store.url)
    storage = AudioStorage(settings.storage)
    pipeline = Pipeline(
        settings,
        source=source,
        sink=sink,
        detector=detector,
        storage=storage,
        store=store,
        attempts=store,
        dead_letters=dead_letter_writer(settings, str(detector.meta.version), storage),
        shadow=shadow,
        breaker=breaker,
    )
    worker = Worker(pipeline)
    handlers.append(worker.on_revoke)
    return worker


@dataclass
class Uploads:
    """The platform side: clips stored under the tenant's root, arrivals appended to the broker."""

    broker: MemoryBroker
    audio_root: Path
    seconds: float = 1.0

    def clip(self, tenant: str, name: str, data: bytes | None = None, seed: int = 0) -> tuple[str, bytes]:
        data = encode(speechlike(self.seconds, seed=seed)) if data is None else data
        path = self.audio_root / tenant / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"file://{path}", data

    def arrival(self, tenant: str, content_id: str, *, seed: int = 0, partition: int | None = None) -> str:
        """Store a clip and publish its arrival; returns its idempotency key."""
        uri, data = self.clip(tenant, f"{content_id}.wav", seed=seed)
        key = f"{tenant}:{content_id}"
        value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
        self.raw(tenant, value, key=key.encode(), partition=partition)
        return key

    def raw(
        self, tenant: str, value: bytes, *, key: bytes | None = None, partition: int | None = None
    ) -> None:
        self.broker.produce(kafka_topic("arrivals", tenant), value, key=key, partition=partition)


def records(
    broker: MemoryBroker, kind: str, tenant: str
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    return list(read_memory_topic(broker, kafka_topic(kind, tenant)))


def drive(worker: Worker, until: Callable[[], bool], timeout: float = 10.0) -> int:
    """Turn the worker until `until()` holds; returns the number of turns. Fails on timeout."""
    deadline = time.monotonic() + timeout
    turns = 0
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {turns} turns ({timeout:.0f} s)")
        worker.turn()
        turns += 1
    return turns


def sink_of(worker: Worker) -> MemorySink:
    sink = worker.sink
    assert isinstance(sink, MemorySink)
    return sink
