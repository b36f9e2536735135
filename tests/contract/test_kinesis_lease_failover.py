"""Several Kinesis workers share one stream through the DynamoDB lease table, on moto_server
(Kinesis, DynamoDB and S3 on one port): N `audioguard worker` processes over an 8-shard
stream, one SIGKILLed mid-run. Its shards must be taken over by the others within the
failover time (measured from the lease table and printed), nothing may be lost, and each
key must have one distinct verdict, counted from the verdict stream itself.

KINESIS_LEASE_WORKERS (default 3; 2 on a crowded machine) sets N.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.transports.kinesis_leases import Lease, open_lease_table
from services.local.emulators import MotoServer
from services.settings import Settings
from tests.contract.conftest import AWS_ENV, Harness, WorkerProcess

WORKERS = int(os.environ.get("KINESIS_LEASE_WORKERS", "3"))
SHARDS = 8
FAILOVER_SECONDS = 6.0


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    workdir: Path = tmp_path_factory.mktemp("kinesis-leases")
    with MotoServer(log_path=workdir / "moto.log") as moto:
        running = Harness("kinesis", moto.endpoint_url, workdir)
        try:
            yield running
        finally:
            running.close()


def _leases(settings: Settings, tenant: str) -> dict[str, Lease]:
    prefix = f"kinesis/audioguard-workers/audioguard-arrivals-{tenant}/"
    return open_lease_table(settings).scan((prefix,))


def _owners(leases: dict[str, Lease]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lease in leases.values():
        if lease.owner is not None:
            counts[lease.owner.split(":")[0]] = counts.get(lease.owner.split(":")[0], 0) + 1
    return counts


def test_a_killed_workers_shards_are_taken_over_in_the_failover_time_and_nothing_is_lost(
    harness: Harness,
) -> None:
    tenants = harness.tenants(1)
    tenant = tenants[0]
    settings = harness.settings(
        tenants,
        kinesis={
            "endpoint_url": harness.endpoint,
            "poll_interval_seconds": 0.05,
            "shard_count": SHARDS,
            "leases": True,
            "failover_seconds": FAILOVER_SECONDS,
            "lease_table": f"leases-{uuid.uuid4().hex[:6]}",
        },
    )
    harness.provision(settings)
    keys_before, records_before = harness.arrivals(settings, tenant, 24)
    keys_after, records_after = harness.arrivals(settings, tenant, 24, seed=1000)
    harness.publish(settings, records_before)

    workers = [harness.start_worker(settings, AUDIOGUARD_WORKER_ID=f"w{i}") for i in range(WORKERS)]
    assert all(isinstance(w, WorkerProcess) for w in workers)

    # every worker holds its fair share (the model loads take a while on a loaded machine)
    deadline = time.monotonic() + 180
    share = -(-SHARDS // WORKERS)
    while True:
        owners = _owners(_leases(settings, tenant))
        if len(owners) == WORKERS and sum(owners.values()) == SHARDS and max(owners.values()) <= share:
            break
        for worker in workers:
            assert worker.failure() is None, worker.failure()
        assert time.monotonic() < deadline, f"the leases never spread over {WORKERS} workers: {owners}"
        time.sleep(0.5)
    print(f"\nleases spread over {WORKERS} workers: {owners}")

    # mid-run: once some verdicts are out, SIGKILL one worker, then publish the rest
    deadline = time.monotonic() + 180
    while len(harness.verdicts(settings, tenant)) < 4:
        assert time.monotonic() < deadline, "no verdicts in 180 s"
        time.sleep(0.5)
    victim = workers[0]
    assert isinstance(victim, WorkerProcess)
    victim_shards = {k for k, v in _leases(settings, tenant).items() if v.owner and v.owner.startswith("w0:")}
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(30)
    killed_at = time.monotonic()
    harness.publish(settings, records_after)

    deadline = killed_at + FAILOVER_SECONDS + 60
    while True:
        leases = _leases(settings, tenant)
        if all(leases[k].owner and not leases[k].owner.startswith("w0:") for k in victim_shards):
            takeover = time.monotonic() - killed_at
            break
        assert time.monotonic() < deadline, f"the dead worker's leases were not taken over: {leases}"
        time.sleep(0.1)
    heartbeat = FAILOVER_SECONDS / 3
    print(
        f"kinesis leases: {len(victim_shards)} shards of the SIGKILLed worker taken over in "
        f"{takeover:.1f}s (failover {FAILOVER_SECONDS:.0f}s, heartbeat {heartbeat:.0f}s, "
        f"load {os.getloadavg()[0]:.1f}); now {_owners(leases)}"
    )
    # a lease expires only after failover_seconds without a renewal seen by the taker; it
    # may have seen the last renewal up to one heartbeat before the kill
    assert takeover >= FAILOVER_SECONDS - heartbeat - 0.5
    assert takeover <= FAILOVER_SECONDS + 2 * heartbeat + 10  # + a margin for a loaded machine

    keys = keys_before + keys_after
    found = harness.wait_for_verdicts(settings, keys, timeout=180)
    assert set(found) == set(keys)  # nothing lost, nothing foreign
    for key in keys:
        distinct = {repr(sorted(v.items())) for v in found[key]}
        assert len(distinct) == 1, f"{key}: {len(distinct)} different verdicts"
    published = sum(len(v) for v in found.values())
    stats = [w.stop() for w in workers[1:]]
    print(
        f"kinesis leases: {len(keys)} arrivals -> {len(found)} keys with one distinct verdict each, "
        f"{published} verdict records on the stream (repeats are re-deliveries answered from the "
        f"store); survivors' stats {[{k: s.get(k) for k in ('verdicts', 'duplicates')} for s in stats]}"
    )
    # graceful stops checkpointed and released: no lease is left with an owner but the dead one's
    left = {k: v.owner for k, v in _leases(settings, tenant).items() if v.owner}
    assert not left, left
