"""The runner (consumers.runner.Worker) on the in-memory transport: backpressure, revoke, drain.

The worker is turned by hand (`Worker.turn`), so each scenario can look at the held
messages, the paused tenants and the committed offsets between two turns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.runner import Worker
from consumers.tenancy import kafka_topic
from consumers.transports.memory import MemoryBroker, MemorySource
from tests.support.memory import (
    ConstantDetector,
    Uploads,
    build_memory_worker,
    drive,
    memory_settings,
    records,
    registered_broker,
)

TENANT = "acme"
ARRIVALS = kafka_topic("arrivals", TENANT)
GROUP = "unit-workers"


@pytest.fixture
def memory() -> Iterator[tuple[str, MemoryBroker]]:
    with registered_broker(TENANT, partitions=2) as pair:
        yield pair


def make_worker(
    memory: tuple[str, MemoryBroker], tmp_path: Path, *, member: str = "a", **overrides: Any
) -> Worker:
    name, broker = memory
    settings = memory_settings(name, [TENANT], tmp_path, **overrides)
    return build_memory_worker(settings, broker, ConstantDetector(), member=member)


def verdict_keys(broker: MemoryBroker) -> list[str]:
    return sorted(
        json.loads(value)["idempotency_key"] for _k, value, _h in records(broker, "verdicts", TENANT)
    )


def partition_of(token: Any) -> int:
    return int(token[1])


# -- backpressure ------------------------------------------------------------------------
def test_a_rejected_message_is_held_its_tenant_paused_and_resumed_below_low_water(
    memory: Any, tmp_path: Path
) -> None:
    """max_held_events=0: paused at the first refusal, resumed only with nothing held."""
    _, broker = memory
    bound = 4
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": bound}, max_held_events=0)
    uploads = Uploads(broker, tmp_path)
    keys = [uploads.arrival(TENANT, f"clip-{i}", seed=i, partition=0) for i in range(10)]
    try:
        worker.turn()
        # one poll handed out all ten: four admitted, the rest held in order, the tenant paused
        assert worker.pipeline.in_flight.events[TENANT] == bound
        assert worker.held_counts() == {TENANT: 10 - bound}
        held = [m.token for m in worker.held[TENANT]]
        assert held == [(ARRIVALS, 0, offset) for offset in range(bound, 10)]
        assert TENANT in worker.source.paused() and worker.pauses == {TENANT: 1}

        resumed_at: list[int] = []
        low_water = bound * worker.pipeline.in_flight.low_water
        while worker.pipeline.stats.acked < len(keys):
            was_paused = TENANT in worker.source.paused()
            worker.turn()
            assert worker.pipeline.in_flight.events.get(TENANT, 0) <= bound, "the bound was passed"
            if was_paused and TENANT not in worker.source.paused():
                resumed_at.append(worker.pipeline.in_flight.events.get(TENANT, 0))
                assert not worker.held, "resumed while messages were still held"
    finally:
        worker.shutdown()
    assert resumed_at and all(n <= low_water for n in resumed_at), (resumed_at, low_water)
    assert worker.resumes[TENANT] == len(resumed_at)
    assert verdict_keys(broker) == sorted(keys), "every held message still got its verdict"
    assert broker.committed(GROUP) == {(ARRIVALS, 0): 10}


def test_a_brief_refusal_holds_without_pausing(memory: Any, tmp_path: Path) -> None:
    """Refusals that do not last (held messages under the hold limit) never pause the tenant:
    a pause drops the consumer's prefetched records, and the resume waits for a new fetch."""
    _, broker = memory
    bound = 4
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": bound}, max_held_events=8)
    uploads = Uploads(broker, tmp_path)
    keys = [uploads.arrival(TENANT, f"clip-{i}", seed=i, partition=0) for i in range(10)]
    try:
        worker.turn()
        assert worker.pipeline.in_flight.events[TENANT] == bound
        assert worker.held_counts() == {TENANT: 10 - bound}
        drive(worker, lambda: worker.pipeline.stats.acked == len(keys))
    finally:
        worker.shutdown()
    assert worker.pauses == {} and worker.resumes == {}
    assert verdict_keys(broker) == sorted(keys)


def test_lasting_refusals_pause_past_the_hold_limit_and_resume_at_a_quarter_of_it(
    memory: Any, tmp_path: Path
) -> None:
    """The hysteresis: paused once more than max_held_events are held, resumed while a
    quarter of them are still held (they keep admission busy while the fetch restarts)."""
    _, broker = memory
    bound, limit = 2, 8
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": bound}, max_held_events=limit)
    worker.poll_batch = 3
    uploads = Uploads(broker, tmp_path)
    keys = [uploads.arrival(TENANT, f"clip-{i}", seed=i, partition=0) for i in range(40)]
    held_at_pause: list[int] = []
    held_at_resume: list[int] = []
    try:
        while worker.pipeline.stats.acked < len(keys):
            was_paused = TENANT in worker.source.paused()
            worker.turn()
            held = worker.held_counts().get(TENANT, 0)
            assert held <= limit + worker.poll_batch, "held past the limit by more than one poll"
            assert worker.pipeline.in_flight.events.get(TENANT, 0) <= bound
            paused = TENANT in worker.source.paused()
            if paused and not was_paused:
                held_at_pause.append(held)
            if was_paused and not paused:
                held_at_resume.append(held)
    finally:
        worker.shutdown()
    assert held_at_pause and all(n > limit for n in held_at_pause), held_at_pause
    # resumed with work still held at least once: the tenant did not run dry first
    assert held_at_resume and all(n <= limit // 4 for n in held_at_resume), held_at_resume
    assert any(n > 0 for n in held_at_resume), held_at_resume
    assert worker.pauses[TENANT] == len(held_at_pause) and worker.resumes[TENANT] == len(held_at_resume)
    assert verdict_keys(broker) == sorted(keys), "every held message still got its verdict"
    assert broker.committed(GROUP) == {(ARRIVALS, 0): len(keys)}


def test_held_messages_keep_their_order_behind_a_rejection(memory: Any, tmp_path: Path) -> None:
    """A message polled while its tenant has held ones queues behind them, never ahead."""
    _, broker = memory
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": 1})
    uploads = Uploads(broker, tmp_path)
    for i in range(3):
        uploads.arrival(TENANT, f"clip-{i}", seed=i, partition=0)
    try:
        worker.turn()
        order = [m.token for m in worker.held[TENANT]]
        assert order == [(ARRIVALS, 0, 1), (ARRIVALS, 0, 2)]
        uploads.arrival(TENANT, "late", partition=0)
        worker.source.resume([TENANT])  # as if resumed early: the late one must queue at the back
        worker.turn()
        assert [m.token for m in worker.held.get(TENANT, [])][-1:] == [(ARRIVALS, 0, 3)]
        drive(worker, lambda: worker.pipeline.stats.acked == 4)
    finally:
        worker.shutdown()


# -- revoke ------------------------------------------------------------------------------
def fill_two_partitions(broker: MemoryBroker, tmp_path: Path, per_partition: int) -> list[str]:
    uploads = Uploads(broker, tmp_path)
    return [
        uploads.arrival(TENANT, f"p{p}-{i}", seed=10 * p + i, partition=p)
        for p in (0, 1)
        for i in range(per_partition)
    ]


def test_revoke_drops_held_messages_and_drains_in_flight_work_of_the_revoked_partition(
    memory: Any, tmp_path: Path
) -> None:
    _, broker = memory
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": 4}, drain_seconds=5.0)
    fill_two_partitions(broker, tmp_path, 4)
    try:
        worker.turn()
        assert worker.pipeline.open_tokens, "something is in flight"
        in_flight_p1 = {t for t in worker.pipeline.open_tokens if partition_of(t) == 1}
        assert in_flight_p1 and any(partition_of(m.token) == 1 for m in worker.held[TENANT])

        # a second member joins; partition 1 is its share ("a" < "b"): revoked at the next poll
        newcomer = MemorySource(broker, [TENANT], group=GROUP, member="b")
        worker.turn()
        assert worker.revocations == 1
        assert all(partition_of(m.token) == 0 for m in worker.held.get(TENANT, [])), "held p1 not dropped"
        assert not any(partition_of(t) == 1 for t in worker.pipeline.open_tokens), "p1 not drained"
        # the drained work was acked before the partition moved: the newcomer starts after it
        committed = broker.committed(GROUP)[(ARRIVALS, 1)]
        assert committed == len(in_flight_p1)
        handed = newcomer.poll(10, 0)
        assert [m.token for m in handed] == [(ARRIVALS, 1, o) for o in range(committed, 4)]
        assert worker.source.assigned() == {(ARRIVALS, 0)}  # type: ignore[attr-defined]
        drive(worker, lambda: not worker.pipeline.busy() and not worker.held)
    finally:
        worker.shutdown()
    assert broker.committed(GROUP)[(ARRIVALS, 0)] == 4


def test_revoke_abandons_in_flight_work_it_cannot_finish_within_the_deadline(
    memory: Any, tmp_path: Path
) -> None:
    _, broker = memory
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": 4}, drain_seconds=0.0)
    fill_two_partitions(broker, tmp_path, 2)
    try:
        worker.turn()
        before = broker.committed(GROUP).get((ARRIVALS, 1))
        newcomer = MemorySource(broker, [TENANT], group=GROUP, member="b")
        worker.turn()
        assert not any(partition_of(t) == 1 for t in worker.pipeline.open_tokens), "p1 work not abandoned"
        # what it abandoned goes to the new owner again, from where the partition was committed
        handed = newcomer.poll(10, 0)
        start = before or 0
        assert [m.token for m in handed] == [(ARRIVALS, 1, o) for o in range(start, 2)]
        assert handed, "nothing of partition 1 was left to re-deliver"
        # the old owner finishing its abandoned work later must not move the new owner's commit
        drive(worker, lambda: not worker.pipeline.busy())
        assert broker.committed(GROUP).get((ARRIVALS, 1)) == before
    finally:
        worker.shutdown()
        newcomer.close(1)


# -- shutdown ----------------------------------------------------------------------------
def test_shutdown_drains_in_flight_work_commits_it_and_leaves_the_held_to_the_next_worker(
    memory: Any, tmp_path: Path
) -> None:
    _, broker = memory
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": 2})
    uploads = Uploads(broker, tmp_path)
    keys = [uploads.arrival(TENANT, f"clip-{i}", seed=i, partition=0) for i in range(5)]
    worker.turn()
    assert worker.pipeline.in_flight.events[TENANT] == 2 and worker.held_counts() == {TENANT: 3}
    worker.shutdown()
    assert worker.pipeline.stats.acked == 2 and not worker.pipeline.busy()
    assert verdict_keys(broker) == sorted(keys[:2])
    assert broker.committed(GROUP) == {(ARRIVALS, 0): 2}

    successor = make_worker(memory, tmp_path, member="c")
    try:
        drive(successor, lambda: successor.pipeline.stats.acked == 3)
    finally:
        successor.shutdown()
    assert successor.pipeline.stats.verdicts == 3
    assert verdict_keys(broker) == sorted(keys)


def test_an_abandoning_shutdown_commits_nothing_unfinished(memory: Any, tmp_path: Path) -> None:
    _, broker = memory
    worker = make_worker(memory, tmp_path, tenant_defaults={"max_in_flight": 2})
    uploads = Uploads(broker, tmp_path)
    for i in range(3):
        uploads.arrival(TENANT, f"clip-{i}", seed=i, partition=0)
    worker.turn()
    worker.shutdown(abandon=True)
    assert broker.committed(GROUP).get((ARRIVALS, 0), 0) == worker.pipeline.stats.acked
    successor = make_worker(memory, tmp_path, member="c")
    try:
        drive(successor, lambda: successor.pipeline.stats.acked == 3 - worker.pipeline.stats.acked)
    finally:
        successor.shutdown()
    assert broker.committed(GROUP) == {(ARRIVALS, 0): 3}
