"""Helpers to drive a real worker against the real embedded broker in tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumers.runner import Worker
from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, create_topics, read_topic, tenant_topics
from services.platform import arrival_for
from services.settings import BatchSettings, KafkaSettings, Settings, StorageSettings, StoreSettings
from services.tools.worker import build_worker
from tests.support.audio import encode, speechlike


def make_settings(
    bootstrap: str,
    tenants: list[str],
    audio_root: Path,
    store_url: str = "memory://",
    group: str | None = None,
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "tenants": tenants,
        "kafka": KafkaSettings(bootstrap_servers=bootstrap, group_id=group or f"g-{tenants[0]}"),
        "storage": StorageSettings(tenant_file_roots={t: [audio_root / t] for t in tenants}),
        "store": StoreSettings(url=store_url),
        "batch": BatchSettings(max_windows=16, max_wait_ms=20),
        "drain_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def provision(settings: Settings, partitions: int = 2) -> None:
    create_topics(settings.kafka, tenant_topics(settings.tenants), partitions=partitions)


def publish_clips(
    settings: Settings, tenant: str, audio_root: Path, count: int, seed: int = 0, seconds: float = 2.0
) -> list[str]:
    """Store `count` clips under the tenant's root and publish one arrival each; returns keys."""
    sink = KafkaSink(settings.kafka)
    keys, futures = [], []
    for i in range(count):
        data = encode(speechlike(seconds, seed=seed + i))
        path = audio_root / tenant / f"clip-{seed + i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        key = f"{tenant}:clip-{seed + i}"
        value = arrival_for(tenant, f"file://{path}", data, key=key, content_id=f"clip-{seed + i}")
        futures.append(
            sink.publish(OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value))
        )
        keys.append(key)
    publish_raw(sink, [])
    for future in futures:
        future.result(30)
    return keys


def publish_raw(sink: KafkaSink, records: list[OutRecord]) -> None:
    futures = [sink.publish(r) for r in records]
    sink.flush(30)
    for future in futures:
        future.result(30)


def read_destination(
    settings: Settings, tenant: str, kind: str = "verdicts", idle: float = 2.0
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    return list(read_topic(settings.kafka, kafka_topic(kind, tenant), idle=idle, timeout=30))


def verdicts_by_key(settings: Settings, tenant: str) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = {}
    for _key, value, _headers in read_destination(settings, tenant):
        verdict = json.loads(value)
        result.setdefault(verdict["idempotency_key"], []).append(verdict)
    return result


class RunningWorker:
    """A worker on a background thread of this process, stopped with `stop()`."""

    def __init__(self, settings: Settings, detector: Any, worker: Worker | None = None) -> None:
        self.worker = worker or build_worker(settings, detector=detector)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except BaseException as error:  # noqa: BLE001 - surfaced to the test
            self.error = error

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        self.stop()
