"""Hot swap: promoting a challenger while a worker serves (in-process broker, file registry).

The real model (the shipped weights, registered twice: versions 1 and 2), the real loading
path (`services.tools.worker.load_model` / `watch_model`) and the real pipeline on the
in-memory transport. Done means: zero lost and zero duplicated verdicts, every batch scored by
one version, the version changes between two batches, readiness never drops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from consumers.models import ModelSlot
from consumers.transports.memory import MemoryBroker
from services.detector import default_artifact_dir
from services.detector.null import load_null_scorer
from services.health import Heartbeat, Readiness
from services.registry import FileRegistry, promote
from services.tools.worker import load_serving_detector, watch_model
from tests.support.memory import Uploads, build_memory_worker, memory_settings, records, registered_broker

TENANT = "acme"
NAME = "audioguard-lfb-cnn"


@pytest.fixture
def memory() -> Iterator[tuple[str, MemoryBroker]]:
    with registered_broker(TENANT, partitions=2) as pair:
        yield pair


def _verdicts(broker: MemoryBroker) -> list[dict[str, Any]]:
    return [json.loads(value) for _, value, _ in records(broker, "verdicts", TENANT)]


def test_promoting_a_challenger_while_serving_swaps_between_batches(
    memory: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    name, broker = memory
    registry = FileRegistry(tmp_path / "registry")
    registry.register(NAME, default_artifact_dir(), description="champion")
    registry.register(NAME, default_artifact_dir(), description="challenger: same weights, new version")
    registry.set_alias(NAME, "champion", 1, reason="test")
    registry.set_alias(NAME, "challenger", 2, reason="test")
    settings = memory_settings(
        name,
        [TENANT],
        tmp_path / "audio",
        model_path=f"models:/{NAME}@champion",
        registry={"uri": str(tmp_path / "registry"), "poll_seconds": 0.05},
        device="cpu",
        torch_threads=1,
    )
    readiness = Readiness()
    hooks = load_serving_detector(settings, Heartbeat(), readiness)
    readiness.set(transport_connected=True)
    assert hooks.detector is not None and hooks.detector.meta.version.endswith("+r1")
    worker = build_memory_worker(settings, broker, hooks.detector)
    watcher = watch_model(worker, settings)
    assert watcher is not None
    uploads = Uploads(broker, tmp_path / "audio")
    keys: list[str] = []
    try:

        def serve(until: Any, timeout: float = 60.0) -> None:
            deadline = time.monotonic() + timeout
            while not until():
                assert time.monotonic() < deadline, "the worker did not get there in time"
                worker.turn()
                assert readiness(), readiness.missing()

        keys += [uploads.arrival(TENANT, f"before-{i}", seed=i) for i in range(30)]
        serve(lambda: len(_verdicts(broker)) >= 10)
        promote(registry, NAME, reason="hot swap test", override=True)
        # arrivals keep coming while the new version loads and warms beside the old one
        keys += [uploads.arrival(TENANT, f"during-{i}", seed=100 + i) for i in range(10)]
        serve(lambda: watcher.swaps == 1)
        keys += [uploads.arrival(TENANT, f"after-{i}", seed=200 + i) for i in range(20)]
        serve(lambda: len(_verdicts(broker)) >= len(keys))
        worker.pipeline.close()
    finally:
        watcher.stop()

    verdicts = _verdicts(broker)
    assert records(broker, "dlq", TENANT) == []
    assert sorted(v["idempotency_key"] for v in verdicts) == sorted(keys)  # none lost, none twice
    versions = [v["model"]["version"] for v in sorted(verdicts, key=lambda v: v["processed_at"])]
    old, new = versions[0], versions[-1]
    assert old.endswith("+r1") and new.endswith("+r2")
    assert all(v["model"]["name"] == NAME for v in verdicts)
    # one switch, never back: each batch was scored (and named) by one version
    switch = versions.index(new)
    assert 10 <= switch <= len(keys) - 20
    assert versions == [old] * switch + [new] * (len(versions) - switch)
    assert all(
        v["model"]["version"] == new for v in verdicts if v["idempotency_key"].startswith(f"{TENANT}:after-")
    )
    assert worker.pipeline.models.current().meta.version == new


def test_a_version_that_fails_verification_is_not_installed(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path / "registry")
    for _ in range(2):
        registry.register(NAME, default_artifact_dir())
    registry.set_alias(NAME, "champion", 1, reason="test")
    served = load_null_scorer()
    slot = ModelSlot(served)
    from services.registry import AliasWatcher, ModelRef

    installed: list[int] = []
    watcher = AliasWatcher(
        registry,
        ModelRef(NAME, alias="champion"),
        serving=1,
        load=lambda directory, version: load_null_scorer(directory),
        install=lambda detector, version: installed.append(version.version) or slot.swap(detector),
    )
    assert watcher.check() is False  # nothing moved
    with (Path(registry.get(NAME, 2).source) / "weights.pt").open("ab") as handle:
        handle.write(b"tampered")
    registry.set_alias(NAME, "champion", 2, reason="bad candidate")
    assert watcher.check() is False
    assert (watcher.failures, watcher.serving, installed, slot.current()) == (1, 1, [], served)


def test_the_slot_refuses_another_window_geometry() -> None:
    served = load_null_scorer()
    other = load_null_scorer()
    other.meta = replace(other.meta, window_seconds=other.meta.window_seconds * 2)
    slot = ModelSlot(served)
    assert slot.swap(other) is False and slot.current() is served
    same = load_null_scorer()
    assert slot.swap(same) is True and slot.current() is same


def test_dead_letters_name_the_model_serving_when_they_are_written(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from consumers.transport import Message
    from services.errors import PoisonMessage
    from services.storage import AudioStorage
    from services.tools.worker import dead_letter_writer
    from tests.support.memory import memory_settings as settings_for

    settings = settings_for("unused", [TENANT], tmp_path)
    slot = ModelSlot(load_null_scorer())
    write = dead_letter_writer(
        settings, "at-start", AudioStorage(settings.storage), current=lambda: str(slot.current().meta.version)
    )
    swapped = load_null_scorer()
    swapped.meta = replace(swapped.meta, version="3.0.0+r9")
    assert slot.swap(swapped)
    message = Message(
        tenant=TENANT, key=b"k", value=b"{", headers=(), token=("t", 0, 0), topic="audioguard.arrivals.acme"
    )
    record = write(message, PoisonMessage("malformed_json", "bad"), first_seen_at=datetime.now(UTC))
    assert b"3.0.0+r9" in record.value + b"".join(v for _, v in record.headers)
