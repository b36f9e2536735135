"""The crash-loop quarantine (consumers.quarantine): the step on its own with a real store, then
the production chain on the in-memory transport with counters a "crashed" worker left behind.

A crash cannot happen inside a unit test's process, so here a crash is what it leaves: counters
in a durable store and no `close()`. tests/integration/test_crash_quarantine.py crashes real
worker processes with a decoder that segfaults.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.quarantine import CRASHED_WORKER, Quarantine
from consumers.steps import Step
from consumers.tenancy import kafka_topic
from consumers.transport import Message
from consumers.transports.memory import MemoryBroker, forget_broker, register_broker
from consumers.work import Work
from dlq.envelope import dead_letter_from_record
from schemas import AudioArrival
from services.store import MemoryStore, SqliteStore
from tests.support.memory import (
    ConstantDetector,
    Uploads,
    build_memory_worker,
    drive,
    memory_settings,
    records,
)

TENANT = "acme"


class Collect(Step):
    def __init__(self) -> None:
        self.got: list[Work] = []

    def submit(self, work: Work) -> None:
        self.got.append(work)

    def keys(self) -> list[str]:
        return [w.arrival.idempotency_key for w in self.got if w.arrival is not None]


class Ledger:
    def __init__(self) -> None:
        self.released: list[str] = []

    def adjust(self, tenant: str, delta_seconds: float) -> None:
        pass

    def release(self, tenant: str, seconds: float) -> None:
        self.released.append(tenant)


def work(key: str, offset: int) -> Work:
    arrival = AudioArrival(
        event_id=f"e-{offset}",
        idempotency_key=key,
        tenant_id=TENANT,
        content_id=key,
        audio_uri=f"file:///audio/{key}.wav",
        submitted_at=datetime.now(UTC),
    )
    message = Message(token=("arrivals", 0, offset), tenant=TENANT, topic="arrivals", value=b"{}")
    return Work(message=message, admitted_at=0.0, arrival=arrival)


class Guard:
    """A Quarantine between two collecting steps, on `store`."""

    def __init__(self, store: Any, after: int = 2) -> None:
        self.store = store
        self.next = Collect()
        self.dead = Collect()
        self.ledger = Ledger()
        self.step = Quarantine(
            self.next, dead_letter=self.dead, counter=store, in_flight=self.ledger, after=after
        )

    def done(self, *works: Work) -> None:
        for w in works:
            self.step.finished(w)
        self.step.poll()


def test_first_attempts_run_together_and_are_cleared_when_done() -> None:
    guard = Guard(MemoryStore())
    works = [work(f"k{i}", i) for i in range(3)]
    for w in works:
        guard.step.submit(w)
    assert guard.next.keys() == ["k0", "k1", "k2"]  # no suspect: nothing waits
    guard.done(*works)
    assert [guard.store.begin_attempt(TENANT, f"k{i}") for i in range(3)] == [1, 1, 1]


def test_a_suspect_waits_for_the_work_in_flight_then_runs_alone() -> None:
    store = MemoryStore()
    store.begin_attempt(TENANT, "suspect")  # left by a worker that died with it in flight
    guard = Guard(store)
    before, suspect, behind = work("before", 0), work("suspect", 1), work("behind", 2)
    for w in (before, suspect, behind):
        guard.step.submit(w)
    assert guard.next.keys() == ["before"]
    guard.step.poll()
    assert guard.next.keys() == ["before"]  # still waiting: "before" is not done
    guard.done(before)
    assert guard.next.keys() == ["before", "suspect"]  # alone: "behind" waits for it
    guard.step.poll()
    assert guard.next.keys() == ["before", "suspect"]
    guard.done(guard.next.got[1])
    assert guard.next.keys() == ["before", "suspect", "behind"]
    assert guard.step.isolated == 1 and guard.dead.got == []


def test_a_waiting_suspect_is_not_counted_so_a_crash_meanwhile_does_not_blame_it(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with SqliteStore(path) as store:
        store.begin_attempt(TENANT, "suspect")
        guard = Guard(store)
        guard.step.submit(work("busy", 0))
        guard.step.submit(work("suspect", 1))
        assert guard.next.keys() == ["busy"]
        # the worker dies here ("busy" crashed it): no close(), the store keeps what it had
    with SqliteStore(path) as store:
        assert store.begin_attempt(TENANT, "suspect") == 2  # its one earlier crash, plus this one
        assert store.begin_attempt(TENANT, "busy") == 2


def test_in_progress_after_times_is_dead_lettered_as_crashed_worker_and_the_rest_goes_on() -> None:
    store = MemoryStore()
    store.begin_attempt(TENANT, "poison")
    store.begin_attempt(TENANT, "poison")
    guard = Guard(store, after=2)
    poison, good = work("poison", 0), work("good", 1)
    guard.step.submit(poison)
    guard.step.submit(good)
    assert guard.next.keys() == ["good"]  # never processed again, and nothing waits for it
    [dead] = guard.dead.got
    assert dead.error is not None and getattr(dead.error, "reason", None) == CRASHED_WORKER
    assert "2 time(s)" in str(dead.error)
    assert dead.message.delivery_attempt == 3  # the envelope's attempt: the third delivery
    assert guard.step.quarantined == 1
    guard.done(dead, guard.next.got[0])
    assert store.begin_attempt(TENANT, "poison") == 1  # a replay after a fix starts afresh


def test_a_graceful_stop_takes_back_what_was_in_progress() -> None:
    store = MemoryStore()
    store.begin_attempt(TENANT, "suspect")
    guard = Guard(store)
    running, suspect = work("running", 0), work("suspect", 1)
    guard.step.submit(running)
    guard.step.submit(suspect)
    guard.step.close()
    assert store.begin_attempt(TENANT, "running") == 1
    assert store.begin_attempt(TENANT, "suspect") == 2  # its crash is remembered, the stop is not


def test_a_revoke_drops_the_waiting_and_takes_back_the_started() -> None:
    store = MemoryStore()
    store.begin_attempt(TENANT, "suspect")
    guard = Guard(store)
    running, suspect, behind = work("running", 0), work("suspect", 1), work("behind", 2)
    for w in (running, suspect, behind):
        guard.step.submit(w)
    guard.step.abandon({running.message.token, behind.message.token})
    assert guard.ledger.released == [TENANT]  # "behind" never started: its admission goes back
    assert store.begin_attempt(TENANT, "running") == 1
    guard.step.poll()
    assert guard.next.keys() == ["running", "suspect"]  # nothing in flight any more: the suspect runs
    assert guard.step.pending() == 0


def test_off_with_zero_or_without_a_counter() -> None:
    store = MemoryStore()
    for _ in range(5):
        store.begin_attempt(TENANT, "k")
    for guard in (Guard(store, after=0), Guard(None)):
        guard.step.submit(work("k", 0))
        assert guard.next.keys() == ["k"] and guard.dead.got == []
    assert store.begin_attempt(TENANT, "k") == 6


# -- the production chain on the in-memory transport --------------------------------------
@pytest.fixture
def broker() -> Iterator[tuple[str, MemoryBroker]]:
    name = f"unit-{uuid.uuid4().hex[:8]}"
    broker = register_broker(name, MemoryBroker())
    for kind in ("arrivals", "verdicts", "dlq"):
        broker.create_topic(kafka_topic(kind, TENANT))
    yield name, broker
    forget_broker(name)


def test_after_two_crashes_the_worker_dead_letters_it_and_answers_everyone_else(
    broker: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    name, memory = broker
    url = f"sqlite:///{tmp_path / 'v.db'}"
    uploads = Uploads(memory, tmp_path)
    keys = [uploads.arrival(TENANT, f"c{i}", seed=i) for i in range(6)]
    poison, suspect = keys[2], keys[4]
    with SqliteStore(tmp_path / "v.db") as store:  # what two crashed workers left behind
        for key in (poison, poison, suspect, keys[5]):
            store.begin_attempt(TENANT, key)
    settings = memory_settings(name, [TENANT], tmp_path, store={"url": url})
    worker = build_memory_worker(settings, memory, ConstantDetector())
    try:
        drive(worker, lambda: worker.pipeline.stats.acked == 6)
    finally:
        worker.shutdown()
    verdicts = [json.loads(v)["idempotency_key"] for _k, v, _h in records(memory, "verdicts", TENANT)]
    assert sorted(verdicts) == sorted(k for k in keys if k != poison)
    [(_key, value, headers)] = records(memory, "dlq", TENANT)
    envelope, _payload = dead_letter_from_record(value, headers)
    assert (envelope.reason, envelope.category, envelope.attempt) == (CRASHED_WORKER, "poison", 3)
    assert worker.pipeline.quarantine.isolated == 2  # the suspect and keys[5], each alone
    with SqliteStore(tmp_path / "v.db") as store:  # every counter cleared once its message was done
        assert {store.begin_attempt(TENANT, k) for k in keys} == {1}


class SlowDetector(ConstantDetector):
    def score_windows(self, windows: Any) -> Any:
        time.sleep(0.3)
        return super().score_windows(windows)


def test_a_sigterm_drain_that_abandons_work_leaves_no_attempt_counted(
    broker: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    name, memory = broker
    url = f"sqlite:///{tmp_path / 'v.db'}"
    uploads = Uploads(memory, tmp_path)
    keys = [uploads.arrival(TENANT, f"c{i}", seed=i) for i in range(8)]
    settings = memory_settings(
        name, [TENANT], tmp_path, store={"url": url}, drain_seconds=0.05, close_seconds=2.0
    )
    worker = build_memory_worker(settings, memory, SlowDetector())
    drive(worker, lambda: worker.pipeline.stats.consumed == 8 and worker.pipeline.score.pending() > 0)
    worker.shutdown()  # what SIGTERM does: the drain deadline passes with work in flight
    assert worker.pipeline.stats.acked < 8
    with SqliteStore(tmp_path / "v.db") as store:
        assert {store.begin_attempt(TENANT, k) for k in keys} == {1}
