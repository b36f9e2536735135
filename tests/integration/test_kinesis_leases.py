"""The DynamoDB lease protocol (consumers.transports.kinesis_leases) on moto_server: the
conditional writes that take, renew, steal, checkpoint and release, on a clock of the test's
own (so failover is exact, not slept for), then two real Kinesis sources sharing a stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from consumers.transport import OutRecord
from consumers.transports.kinesis import SHARD_END, KinesisSink, KinesisSource, provision_kinesis
from consumers.transports.kinesis_leases import Lease, LeaseCoordinator, LeaseTable, open_lease_table
from services.errors import FatalError
from services.local.emulators import MotoServer
from services.settings import Settings
from services.store import MemoryStore


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as running:
        yield running


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _table(moto: MotoServer) -> LeaseTable:
    settings = Settings(
        transport="kinesis",
        tenants=["t"],
        kinesis={"endpoint_url": moto.endpoint_url, "lease_table": f"leases-{uuid.uuid4().hex[:6]}"},
    )
    table = open_lease_table(settings)
    table.ensure()
    table.ensure()  # idempotent
    return table


def _shards(table: LeaseTable, prefix: str, graph: dict[str, tuple[str, ...]]) -> None:
    for shard, parents in graph.items():
        assert table.create(Lease(f"{prefix}{shard}", "s", shard, parents))
        assert not table.create(Lease(f"{prefix}{shard}", "s", shard, parents))  # exists: no overwrite


def _worker(table: LeaseTable, name: str, prefix: str, clock: Clock) -> LeaseCoordinator:
    return LeaseCoordinator(table, name, [prefix], failover_seconds=6.0, clock=clock)


def test_workers_split_the_shards_fairly_and_a_stolen_lease_refuses_its_old_owner(moto: MotoServer) -> None:
    table, prefix, clock = _table(moto), "kinesis/app/s/", Clock()
    _shards(table, prefix, {f"shard-{i}": () for i in range(8)})
    a, b, c = (_worker(table, n, prefix, clock) for n in "abc")
    a.tick()
    assert len(a.owned()) == 8  # alone: every lease
    first = sorted(a.owned())[0]
    for _ in range(4):
        for worker in (b, c, a):
            worker.tick()
    sizes = sorted(len(w.owned()) for w in (a, b, c))
    assert sizes == [2, 3, 3], sizes
    assert set(a.owned()) | set(b.owned()) | set(c.owned()) == set(table.scan((prefix,)))
    assert b.stolen + c.stolen == 5
    # a lease taken away cannot be checkpointed by its old owner
    stolen = next(k for k in (set(b.owned()) | set(c.owned())) if k != first)
    a.set_checkpoint(stolen, "999")
    assert table.scan((prefix,))[stolen].checkpoint is None
    owner = b if stolen in b.owned() else c
    owner.set_checkpoint(stolen, "42")
    assert table.scan((prefix,))[stolen].checkpoint == "42"


def test_a_lease_not_renewed_within_the_failover_time_is_taken_over_and_not_before(moto: MotoServer) -> None:
    table, prefix, clock = _table(moto), "kinesis/app/s/", Clock()
    _shards(table, prefix, {f"shard-{i}": () for i in range(4)})
    a, b = _worker(table, "a", prefix, clock), _worker(table, "b", prefix, clock)
    a.tick()
    a.set_checkpoint(f"{prefix}shard-0", "17")
    for _ in range(3):  # b steals its share from the live a
        b.tick()
        a.tick()
    held_by_a = set(a.owned())
    assert len(held_by_a) == 2
    # a dies: no more renewals. b waits the failover time on its own clock, not less
    b.tick()
    clock.now += 5.9
    b.tick()
    assert set(b.owned()).isdisjoint(held_by_a)
    clock.now += 0.2
    b.tick()
    assert set(b.owned()) == set(table.scan((prefix,)))
    assert b.taken_over == 2
    # the checkpoint travels with the lease
    assert b.get_checkpoint(f"{prefix}shard-0") == "17"


def test_a_graceful_stop_releases_and_a_child_waits_for_shard_end(moto: MotoServer) -> None:
    table, prefix, clock = _table(moto), "kinesis/app/s/", Clock()
    _shards(table, prefix, {"parent": (), "left": ("parent",), "right": ("parent",)})
    a, b = _worker(table, "a", prefix, clock), _worker(table, "b", prefix, clock)
    a.tick()
    assert set(a.owned()) == {f"{prefix}parent"}  # the children wait
    a.set_checkpoint(f"{prefix}parent", SHARD_END)  # finished: released at once
    assert table.scan((prefix,))[f"{prefix}parent"].owner is None
    a.tick()
    b.tick()
    a.tick()
    assert {len(a.owned()), len(b.owned())} == {1}
    a.close()  # released: b needs no failover time to take it
    assert all(lease.owner != "a" for lease in table.scan((prefix,)).values())
    b.tick()
    assert set(b.owned()) == {f"{prefix}left", f"{prefix}right"}


def test_two_sources_share_a_stream_and_each_record_is_read_by_one(moto: MotoServer) -> None:
    tenant = f"l{uuid.uuid4().hex[:6]}"
    settings = Settings(
        transport="kinesis",
        tenants=[tenant],
        kinesis={
            "endpoint_url": moto.endpoint_url,
            "shard_count": 4,
            "poll_interval_seconds": 0.02,
            "leases": True,
            "lease_table": f"leases-{tenant}",
        },
    )
    provision_kinesis(settings, [tenant])
    table = open_lease_table(settings)
    table.ensure()
    sink = KinesisSink(settings)
    futures = [
        sink.publish(OutRecord(tenant, "arrivals", f"k{i}".encode(), f"v{i}".encode(), ordering_key=f"c{i}"))
        for i in range(40)
    ]
    sink.flush(30)
    for future in futures:
        future.result(30)
    sink.close(5)
    prefix = f"kinesis/audioguard-workers/audioguard-arrivals-{tenant}/"
    clock = Clock()
    readers = []
    for name in ("a", "b"):
        leases = LeaseCoordinator(
            table, name, [prefix], failover_seconds=6.0, seed=MemoryStore(), clock=clock
        )
        readers.append((leases, KinesisSource(settings, [tenant], leases, leases=leases)))
    for _ in range(3):
        for leases, _source in readers:
            leases.tick()
    assert [len(leases.owned()) for leases, _ in readers] == [2, 2]
    seen: dict[str, list[str]] = {}
    for _ in range(40):
        for leases, source in readers:
            batch = source.poll(100, 0.05)
            for message in batch:
                seen.setdefault(message.value.decode(), []).append(leases.owner)
            source.ack([m.token for m in batch])
        if len(seen) == 40:
            break
    assert sorted(seen) == sorted(f"v{i}" for i in range(40))
    assert all(len(readers_of) == 1 for readers_of in seen.values())
    stored = table.scan((prefix,))
    assert all(lease.checkpoint for lease in stored.values())  # checkpoints in the lease items
    for _leases, source in readers:
        source.close(5)  # checkpoint, then release
    assert all(lease.owner is None for lease in table.scan((prefix,)).values())


def test_a_lease_table_that_goes_away_stops_the_worker_instead_of_idling(moto: MotoServer) -> None:
    table, prefix = _table(moto), "kinesis/app/s/"
    _shards(table, prefix, {"shard-0": ()})
    leases = LeaseCoordinator(table, "a", [prefix], failover_seconds=0.3).start()
    try:
        assert list(leases.owned()) == [f"{prefix}shard-0"]
        table._client.delete_table(TableName=table.name)
        deadline = time.monotonic() + 10
        with pytest.raises(FatalError, match="missing_topic"):
            while time.monotonic() < deadline:
                leases.owned()
                time.sleep(0.05)
    finally:
        leases.close()
