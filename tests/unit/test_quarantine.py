"""The crash-loop quarantine (consumers.quarantine): the step on its own with a real store, then
the production chain on the in-memory transport with counters a "crashed" worker left behind.

A crash cannot happen inside a unit test's process, so here a crash is what it leaves: counters
in a durable store and no `close()`. tests/integration/test_crash_quarantine.py crashes real
worker processes with a decoder that segfaults.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers.quarantine import CRASHED_WORKER, Quarantine
from consumers.steps import Step
from consumers.transport import Message
from consumers.transports.memory import MemoryBroker
from consumers.work import Work
from dlq.envelope import dead_letter_from_record
from schemas import AudioArrival
from services.errors import FatalError
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

    def submit(self, *works: Work) -> None:
        """What one loop turn does: the works come in, then the step is polled."""
        for w in works:
            self.step.submit(w)
        self.step.poll()

    def done(self, *works: Work) -> None:
        for w in works:
            self.step.finished(w)
        self.step.poll()


def crashed(store: Any, key: str, times: int = 1) -> None:
    """What `times` workers that died with `key` in flight left in the store."""
    store.begin_attempts([(TENANT, key)] * times)


def counted(store: Any, *keys: str) -> list[int]:
    """The attempts counted for `keys` now (claiming them, so ask last)."""
    return store.claim_attempts([(TENANT, k) for k in keys])  # type: ignore[no-any-return]


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def claim_attempts(self, items: Any) -> list[int]:
        self.calls.append(("claim", len(items)))
        return super().claim_attempts(items)

    def clear_attempts(self, items: Any) -> None:
        self.calls.append(("clear", len(items)))
        super().clear_attempts(items)


def test_first_attempts_run_together_counted_in_one_round_trip_and_cleared_when_done() -> None:
    store = CountingStore()
    guard = Guard(store)
    works = [work(f"k{i}", i) for i in range(5)]
    guard.submit(*works)
    assert guard.next.keys() == [f"k{i}" for i in range(5)]  # no suspect: nothing waits
    guard.done(*works)
    assert store.calls == [("claim", 5), ("clear", 5)]  # one round trip per turn, not per message
    assert counted(store, *[f"k{i}" for i in range(5)]) == [0] * 5


def test_a_suspect_waits_for_the_work_in_flight_then_runs_alone() -> None:
    store = MemoryStore()
    crashed(store, "suspect")
    guard = Guard(store)
    before, suspect, behind = work("before", 0), work("suspect", 1), work("behind", 2)
    guard.submit(before, suspect, behind)
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


def test_what_waits_behind_a_suspect_is_not_counted_so_a_crash_meanwhile_blames_nobody(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.db"
    with SqliteStore(path) as store:
        crashed(store, "suspect")
        guard = Guard(store)
        guard.submit(work("busy", 0), work("suspect", 1), work("behind", 2))
        assert guard.next.keys() == ["busy"]
        guard.submit(work("later", 3))
        # the worker dies here ("busy" crashed it): no close(), the store keeps what it had
    with SqliteStore(path) as store:
        assert counted(store, "busy", "suspect", "behind", "later") == [1, 1, 0, 0]


def test_in_progress_after_times_is_dead_lettered_as_crashed_worker_and_the_rest_goes_on() -> None:
    store = MemoryStore()
    crashed(store, "poison", times=2)
    guard = Guard(store, after=2)
    poison, good = work("poison", 0), work("good", 1)
    guard.submit(poison, good)
    assert guard.next.keys() == ["good"]  # never processed again, and nothing waits for it
    [dead] = guard.dead.got
    assert dead.error is not None and getattr(dead.error, "reason", None) == CRASHED_WORKER
    assert "2 time(s)" in str(dead.error)
    assert dead.message.delivery_attempt == 3  # the envelope's attempt: the third delivery
    assert guard.step.quarantined == 1
    guard.done(dead, guard.next.got[0])
    assert counted(store, "poison") == [0]  # a replay after a fix starts afresh


def test_a_suspect_that_crashes_alone_is_counted_once_more() -> None:
    store = MemoryStore()
    crashed(store, "suspect")
    guard = Guard(store)
    guard.submit(work("suspect", 0))
    assert guard.next.keys() == ["suspect"]
    # it crashes the worker: nothing is closed
    assert counted(store, "suspect") == [2]


def test_a_graceful_stop_takes_back_what_was_in_progress_or_claimed() -> None:
    store = MemoryStore()
    crashed(store, "suspect")
    guard = Guard(store)
    guard.submit(work("running", 0), work("suspect", 1), work("behind", 2))
    guard.step.close()
    # its crash is remembered, the stop is not
    assert counted(store, "running", "suspect", "behind") == [0, 1, 0]


class BrokenStore(MemoryStore):
    def undo_attempts(self, items: Any) -> None:
        raise FatalError("store_error", "corrupt file")


def test_a_stop_on_a_broken_store_still_closes() -> None:
    guard = Guard(BrokenStore())
    guard.submit(work("running", 0))
    guard.step.close()  # the FatalError that stops the worker must not escape its shutdown


def test_a_revoke_drops_the_waiting_and_takes_back_the_started() -> None:
    store = MemoryStore()
    crashed(store, "suspect")
    guard = Guard(store)
    running, suspect, behind = work("running", 0), work("suspect", 1), work("behind", 2)
    guard.submit(running, suspect, behind)
    guard.step.abandon({running.message.token, behind.message.token})
    assert guard.ledger.released == [TENANT]  # "behind" never started: its admission goes back
    guard.step.poll()
    assert guard.next.keys() == ["running", "suspect"]  # nothing in flight any more: the suspect runs
    assert guard.step.pending() == 0
    assert counted(store, "running", "behind") == [0, 0]


def test_off_with_zero_or_without_a_counter() -> None:
    store = MemoryStore()
    crashed(store, "k", times=5)
    for guard in (Guard(store, after=0), Guard(None)):
        guard.submit(work("k", 0))
        assert guard.next.keys() == ["k"] and guard.dead.got == []
    assert counted(store, "k") == [5]


# -- the production chain on the in-memory transport --------------------------------------
def test_after_two_crashes_the_worker_dead_letters_it_and_answers_everyone_else(
    broker: tuple[str, MemoryBroker], tmp_path: Path
) -> None:
    name, memory = broker
    url = f"sqlite:///{tmp_path / 'v.db'}"
    uploads = Uploads(memory, tmp_path)
    keys = [uploads.arrival(TENANT, f"c{i}", seed=i) for i in range(6)]
    poison, suspect = keys[2], keys[4]
    with SqliteStore(tmp_path / "v.db") as store:  # what two crashed workers left behind
        store.begin_attempts([(TENANT, k) for k in (poison, poison, suspect, keys[5])])
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
        assert store.claim_attempts([(TENANT, k) for k in keys]) == [0] * len(keys)


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
        assert store.claim_attempts([(TENANT, k) for k in keys]) == [0] * len(keys)
