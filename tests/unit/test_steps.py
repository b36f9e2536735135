"""Each pipeline step (consumers.steps) on the in-memory transport: no broker, milliseconds each.

The chain is the production one (`consumers.runner.Pipeline`) wherever a scenario can be
reached from an arrival; scoring and publishing, whose failures cannot be provoked from
outside, are driven step by step with the real downstream steps behind them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consumers.admission import InFlight
from consumers.batching import BatchPolicy, MicroBatcher
from consumers.steps import Commit, Publish, ScoreBatches, Step, Work
from consumers.tenancy import kafka_topic
from consumers.transport import Message, OutRecord
from consumers.transports.memory import MemoryBroker, MemorySink, MemorySource
from dlq.envelope import dead_letter_from_record
from schemas import AudioArrival
from services.errors import FatalError, RetryableError
from services.platform import arrival_for
from tests.support.memory import (
    ConstantDetector,
    Uploads,
    build_memory_worker,
    drive,
    memory_settings,
    records,
)

TENANT = "acme"


def worker_for(
    broker: tuple[str, MemoryBroker], tmp_path: Path, detector: Any = None, **overrides: Any
) -> Any:
    name, memory = broker
    settings = memory_settings(name, [TENANT], tmp_path, **overrides)
    return build_memory_worker(settings, memory, detector or ConstantDetector())


def dead_letter_reasons(memory: MemoryBroker) -> dict[bytes, str]:
    reasons = {}
    for _key, value, headers in records(memory, "dlq", TENANT):
        envelope, payload = dead_letter_from_record(value, headers)
        assert envelope.source.transport == "memory"
        reasons[payload] = envelope.reason
    return reasons


# -- ParseArrival --------------------------------------------------------------------------
def test_parse_dead_letters_bad_json_unchanged_and_commits_it(broker: Any, tmp_path: Path) -> None:
    _, memory = broker
    worker = worker_for(broker, tmp_path)
    uploads = Uploads(memory, tmp_path)
    uploads.raw(TENANT, b'{"event_id": "oops", "tenant_id": ')
    uploads.raw(TENANT, b"[1, 2]")
    key = uploads.arrival(TENANT, "good")
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 3)
    finally:
        worker.shutdown()
    assert dead_letter_reasons(memory) == {
        b'{"event_id": "oops", "tenant_id": ': "malformed_json",
        b"[1, 2]": "schema",
    }
    assert [json.loads(v)["idempotency_key"] for _k, v, _h in records(memory, "verdicts", TENANT)] == [key]
    assert memory.committed("unit-workers") == {(kafka_topic("arrivals", TENANT), 0): 3}


def test_parse_dead_letters_a_payload_claiming_another_tenant(broker: Any, tmp_path: Path) -> None:
    _, memory = broker
    worker = worker_for(broker, tmp_path)
    uploads = Uploads(memory, tmp_path)
    uri, data = uploads.clip(TENANT, "theirs.wav")
    claims_other = arrival_for("globex", uri, data, key="globex:x", content_id="x")
    uploads.raw(TENANT, claims_other)
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 1)
    finally:
        worker.shutdown()
    assert dead_letter_reasons(memory) == {claims_other: "tenant_mismatch"}


@pytest.mark.parametrize("on_duplicate", ["republish", "skip"])
def test_a_duplicate_is_answered_from_the_store_without_scoring(
    broker: Any, tmp_path: Path, on_duplicate: str
) -> None:
    _, memory = broker
    detector = ConstantDetector()
    worker = worker_for(broker, tmp_path, detector, store={"url": "memory://", "on_duplicate": on_duplicate})
    uploads = Uploads(memory, tmp_path)
    uploads.arrival(TENANT, "clip", seed=1)
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 1)
        scored = detector.windows_scored
        uploads.arrival(TENANT, "clip", seed=1)  # the platform publishes the same upload again
        drive(worker, lambda: worker.pipeline.stats.acked == 2)
    finally:
        worker.shutdown()
    stats = worker.pipeline.stats
    assert (stats.verdicts, stats.duplicates) == (1, 1)
    assert detector.windows_scored == scored, "a duplicate must not be scored again"
    verdicts = [value for _k, value, _h in records(memory, "verdicts", TENANT)]
    if on_duplicate == "republish":
        assert len(verdicts) == 2 and verdicts[0] == verdicts[1], "the stored verdict, byte for byte"
    else:
        assert len(verdicts) == 1


# -- FetchAudio ----------------------------------------------------------------------------
def test_fetch_and_decode_errors_are_dead_lettered_and_the_rest_scored(broker: Any, tmp_path: Path) -> None:
    _, memory = broker
    worker = worker_for(broker, tmp_path)
    uploads = Uploads(memory, tmp_path)
    good = uploads.arrival(TENANT, "good")
    missing = arrival_for(
        TENANT, f"file://{tmp_path / TENANT / 'gone.wav'}", b"x", key=f"{TENANT}:gone", content_id="gone"
    )
    uri, data = uploads.clip(TENANT, "noise.wav", data=b"RIFF this is not audio at all")
    garbage = arrival_for(TENANT, uri, data, key=f"{TENANT}:noise", content_id="noise")
    outside = arrival_for(TENANT, "file:///etc/hostname", b"x", key=f"{TENANT}:etc", content_id="etc")
    for value in (missing, garbage, outside):
        uploads.raw(TENANT, value)
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 4)
    finally:
        worker.shutdown()
    assert dead_letter_reasons(memory) == {
        missing: "missing_object",
        garbage: "undecodable_audio",
        outside: "uri_outside_roots",
    }
    assert [json.loads(v)["idempotency_key"] for _k, v, _h in records(memory, "verdicts", TENANT)] == [good]
    assert worker.pipeline.in_flight.total_events() == 0, "a dead letter releases its admission"


# -- ScoreBatches --------------------------------------------------------------------------
class Collect(Step):
    """The next step, keeping what it was handed."""

    def __init__(self) -> None:
        self.items: list[Work] = []

    def submit(self, work: Work) -> None:
        self.items.append(work)


def scored_work(content_id: str, windows: np.ndarray) -> Work:
    arrival = AudioArrival.model_validate(
        json.loads(
            arrival_for(TENANT, f"file:///a/{content_id}.wav", b"x", key=content_id, content_id=content_id)
        )
    )
    message = Message(token=("t", 0, 0), tenant=TENANT, topic="t", value=b"")
    return Work(message=message, admitted_at=0.0, arrival=arrival, windows=windows)


def test_score_errors_are_per_item_and_never_blame_the_neighbours() -> None:
    broken = 7.0  # a window of this value makes the model fail (a stand-in for a bad input)

    def score(windows: np.ndarray) -> np.ndarray:
        if np.any(windows[:, 0] == broken):
            raise ValueError("the model cannot score this window")
        return np.full(len(windows), 0.25, dtype=np.float32)

    verdicts, dead = Collect(), Collect()
    batcher: MicroBatcher[Work] = MicroBatcher(
        BatchPolicy(max_windows=16, max_audio_seconds=100.0, max_wait_seconds=0.0), weight=lambda _t: 1.0
    )
    with ThreadPoolExecutor(1) as pool:
        step = ScoreBatches(
            verdicts, dead_letter=dead, batcher=batcher, executor=pool, score=score, window_seconds=1.0
        )
        for name, value in (("a", 0.1), ("bad", broken), ("c", 0.2), ("d", 0.3)):
            step.submit(scored_work(name, np.full((2, 4), value, dtype=np.float32)))
        step.join(5)
    assert sorted(w.arrival.content_id for w in verdicts.items if w.arrival) == ["a", "c", "d"]
    assert all(w.scores is not None and list(w.scores) == [0.25, 0.25] for w in verdicts.items)
    (failed,) = dead.items
    assert failed.arrival is not None and failed.arrival.content_id == "bad"
    assert isinstance(failed.error, RetryableError) and failed.error.reason == "scoring_failed"


def test_a_scorer_returning_the_wrong_length_fails_its_items_instead_of_misassigning_scores() -> None:
    verdicts, dead = Collect(), Collect()
    batcher: MicroBatcher[Work] = MicroBatcher(
        BatchPolicy(max_windows=16, max_audio_seconds=100.0, max_wait_seconds=0.0), weight=lambda _t: 1.0
    )
    with ThreadPoolExecutor(1) as pool:
        step = ScoreBatches(
            verdicts,
            dead_letter=dead,
            batcher=batcher,
            executor=pool,
            score=lambda windows: np.zeros(len(windows) - 1, dtype=np.float32),
            window_seconds=1.0,
        )
        step.submit(scored_work("a", np.zeros((2, 4), dtype=np.float32)))
        step.join(5)
    assert verdicts.items == []
    assert [getattr(w.error, "reason", None) for w in dead.items] == ["scorer_length"]


# -- Publish and Commit --------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def consumed() -> tuple[MemoryBroker, MemorySource, list[Message]]:
    memory = MemoryBroker()
    for kind in ("arrivals", "verdicts"):
        memory.create_topic(kafka_topic(kind, TENANT))
    for i in range(3):
        memory.produce(kafka_topic("arrivals", TENANT), f"arrival-{i}".encode())
    source = MemorySource(memory, [TENANT], group="g")
    return memory, source, source.poll(10, 0)


def in_flight(count: int) -> InFlight:
    flight = InFlight(max_events=10, max_seconds=100.0, tenant_limits=lambda _t: (10, 100.0))
    for _ in range(count):
        flight.add(TENANT, 0.0)
    return flight


def verdict_work(message: Message) -> Work:
    record = OutRecord(TENANT, "verdicts", message.value, b"verdict-of-" + message.value)
    return Work(message=message, admitted_at=0.0, record=record, outcome="verdict")


def test_commit_acks_only_a_contiguous_run_of_finished_messages(consumed: Any) -> None:
    memory, source, messages = consumed
    flight = in_flight(3)
    done: list[Work] = []
    commit = Commit(source, flight, on_done=done.append)
    for message in (messages[2], messages[1]):
        commit.submit(verdict_work(message))
    commit.poll()
    assert memory.committed("g") == {}, "offset 0 is unfinished"
    assert flight.total_events() == 1, "finished work releases its admission even before the commit moves"
    commit.submit(verdict_work(messages[0]))
    commit.poll()
    assert memory.committed("g") == {(kafka_topic("arrivals", TENANT), 0): 3}
    assert len(done) == 3 and commit.acked == 3


def test_a_failed_publish_is_retried_after_its_backoff_and_acked_only_once_confirmed(consumed: Any) -> None:
    memory, source, messages = consumed
    clock = Clock()
    sink = MemorySink(memory)
    commit = Commit(source, in_flight(3))
    publish = Publish(commit, sink=sink, attempts=3, backoff=0.2, clock=clock)
    sink.fail_next(where=lambda record: record.key == b"arrival-1")  # a partial publish
    for message in messages:
        publish.submit(verdict_work(message))
    publish.poll()
    commit.poll()
    assert memory.committed("g") == {(kafka_topic("arrivals", TENANT), 0): 1}, "stops before the failed one"
    clock.now += 0.1
    publish.poll()
    assert publish.pending() == 1, "not re-sent before its backoff"
    clock.now += 0.15
    publish.poll()  # re-sent
    publish.poll()  # confirmed
    commit.poll()
    assert memory.committed("g") == {(kafka_topic("arrivals", TENANT), 0): 3}
    values = [v for _k, v, _h in records(memory, "verdicts", TENANT)]
    assert sorted(values) == [b"verdict-of-arrival-0", b"verdict-of-arrival-1", b"verdict-of-arrival-2"]


def test_a_publish_that_keeps_failing_stops_the_worker_without_acking(consumed: Any) -> None:
    memory, source, messages = consumed
    clock = Clock()
    sink = MemorySink(memory)
    commit = Commit(source, in_flight(1))
    publish = Publish(commit, sink=sink, attempts=2, backoff=0.01, clock=clock)
    sink.fail_next(2)
    publish.submit(verdict_work(messages[0]))
    publish.poll()
    clock.now += 1
    publish.poll()
    with pytest.raises(FatalError) as stopped:
        publish.poll()
    assert stopped.value.reason == "publish_failed"
    commit.poll()
    assert memory.committed("g") == {}


def test_parse_dead_letters_an_oversize_event_before_reading_it(broker: Any, tmp_path: Path) -> None:
    _, memory = broker
    worker = worker_for(broker, tmp_path, limits={"max_event_bytes": 64})
    Uploads(memory, tmp_path).raw(TENANT, b"{" + b" " * 100 + b"}")
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 1)
    finally:
        worker.shutdown()
    assert list(dead_letter_reasons(memory).values()) == ["oversize_event"]
    assert worker.pipeline.stats.retried == 0


def test_a_finished_batch_wakes_the_loop_from_its_scorer_thread() -> None:
    """ScoreBatches calls on_ready when a batch is done, so a loop waiting for work
    (Pipeline.wait) wakes then, not at its poll timeout; nothing before the batch finishes."""
    import threading

    release, ready = threading.Event(), threading.Event()

    def score(windows: np.ndarray) -> np.ndarray:
        release.wait(5)
        return np.zeros(len(windows), dtype=np.float32)

    verdicts, dead = Collect(), Collect()
    batcher: MicroBatcher[Work] = MicroBatcher(
        BatchPolicy(max_windows=16, max_audio_seconds=100.0, max_wait_seconds=0.0), weight=lambda _t: 1.0
    )
    with ThreadPoolExecutor(1) as pool:
        step = ScoreBatches(
            verdicts,
            dead_letter=dead,
            batcher=batcher,
            executor=pool,
            score=score,
            window_seconds=1.0,
            on_ready=ready.set,
        )
        step.submit(scored_work("a", np.zeros((2, 4), dtype=np.float32)))
        step.poll()  # the idle scorer takes the batch at once
        assert not ready.wait(0.05), "woken before the batch finished"
        release.set()
        assert ready.wait(5), "the finished batch did not wake the loop"
        step.join(5)
    assert [w.arrival.content_id for w in verdicts.items if w.arrival] == ["a"]


def test_a_fresh_verdicts_record_is_the_one_its_stored_json_gives(broker: Any, tmp_path: Path) -> None:
    """BuildVerdict no longer parses back the verdict it has just stored: the key and headers it
    builds from the model must be those `verdict_record` reads from the JSON (which a verdict
    stored by another worker still goes through)."""
    from consumers.steps import verdict_record

    _, memory = broker
    worker = worker_for(broker, tmp_path)
    uploads = Uploads(memory, tmp_path)
    for name in ("one", "two"):
        uploads.arrival(TENANT, name)
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 2)
    finally:
        worker.shutdown()
    published = records(memory, "verdicts", TENANT)
    assert len(published) == 2
    for key, value, headers in published:
        expected = verdict_record(TENANT, value)
        assert key == expected.key
        assert dict(headers) == dict(expected.headers)
