"""Kinesis shard leases in DynamoDB: several workers share a stream's shards, the KCL way.

One item per shard in the lease table (`kinesis.lease_table`), keyed by the shard's
checkpoint name (`kinesis/<application>/<stream>/<shard>`):

    lease_key   S   the key
    stream      S   shard_id S
    parents     L   parent shard ids (a split has one, a merge two)
    owner       S   the worker holding it; absent when free
    counter     N   bumped by every take, renew, steal and release
    checkpoint  S   the last sequence number whose verdict is durable, or SHARD_END;
                    absent: read from TRIM_HORIZON

Every write is conditional, so two workers can never both believe a write of theirs won:

- create   `attribute_not_exists(lease_key)` (every worker creates what it discovers);
- take     `counter = :seen` (a free lease, or one whose counter did not move for
           `kinesis.failover_seconds` on this worker's own clock: no clock is shared);
- steal    the same condition, on a live lease of a worker holding more than its share;
- renew    `owner = :me AND counter = :mine`, every failover/3 seconds (the heartbeat);
- checkpoint `owner = :me`: a worker that lost a lease can never move its checkpoint;
- release  `owner = :me`, after the last checkpoint on a graceful stop.

A worker's fair share is ceil(leases / live owners); it takes free and expired leases up to
it, then steals one lease per heartbeat from the busiest owner above it. A child shard's
lease is never taken before every parent's checkpoint is SHARD_END (or the parent's lease
is gone: aged out of the stream), so per-content order survives a reshard (`eligible`).

This module must never checkpoint on its own initiative (only `set_checkpoint`, which the
source calls once verdicts are durable), never let a botocore exception escape (all go
through `consumers.transports.kinesis._sdk_errors`), and never hold its lock across a call
to the source.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from consumers.tenancy import kinesis_stream, validate_tenant
from consumers.transports.kinesis import SHARD_END, CheckpointStore, _sdk_errors, checkpoint_name
from services.errors import FatalError, RetryableError
from services.settings import Settings

__all__ = [
    "Lease",
    "LeaseCoordinator",
    "LeaseTable",
    "eligible",
    "fair_share",
    "open_coordinator",
    "open_lease_table",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    key: str
    stream: str
    shard_id: str
    parents: tuple[str, ...] = ()
    owner: str | None = None
    counter: int = 0
    checkpoint: str | None = None


def eligible(leases: Mapping[str, Lease]) -> set[str]:
    """Keys of the leases that may be read now: not finished, and every parent finished.
    A parent without a lease has aged out of the stream (nothing left to read)."""
    by_shard = {(lease.stream, lease.shard_id): lease for lease in leases.values()}
    ready: set[str] = set()
    for key, lease in leases.items():
        if lease.checkpoint == SHARD_END:
            continue
        parents = [by_shard.get((lease.stream, p)) for p in lease.parents]
        if all(p is None or p.checkpoint == SHARD_END for p in parents):
            ready.add(key)
    return ready


def fair_share(leases: int, owners: int) -> int:
    return math.ceil(leases / max(owners, 1)) if leases else 0


class LeaseTable:
    """The DynamoDB lease table; every method raises `RetryableError` / `FatalError` only.
    The conditional methods return False when their condition failed (someone else won)."""

    def __init__(self, client: Any, name: str) -> None:
        self._client = client
        self.name = name

    def ensure(self, timeout: float = 60.0) -> None:
        """Create the table (on-demand billing) unless it exists, and wait until ACTIVE."""
        try:
            with _sdk_errors("dynamodb.describe_table"):
                status = self._client.describe_table(TableName=self.name)["Table"]["TableStatus"]
        except FatalError as missing:
            if missing.reason != "missing_topic":
                raise
            try:
                with _sdk_errors("dynamodb.create_table"):
                    self._client.create_table(
                        TableName=self.name,
                        KeySchema=[{"AttributeName": "lease_key", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "lease_key", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST",
                    )
            except RetryableError as exc:
                if exc.reason != "resource_in_use":
                    raise
            status = "CREATING"
        deadline = time.monotonic() + timeout
        while status != "ACTIVE":
            if time.monotonic() > deadline:
                raise RetryableError(
                    "unavailable", f"lease table {self.name} not ACTIVE after {timeout:.0f}s"
                )
            time.sleep(0.2)
            with _sdk_errors("dynamodb.describe_table"):
                status = self._client.describe_table(TableName=self.name)["Table"]["TableStatus"]

    def scan(self, prefixes: tuple[str, ...]) -> dict[str, Lease]:
        """Every lease whose key starts with one of `prefixes` (strongly consistent)."""
        out: dict[str, Lease] = {}
        kwargs: dict[str, Any] = {"TableName": self.name, "ConsistentRead": True}
        while True:
            with _sdk_errors("dynamodb.scan"):
                page = self._client.scan(**kwargs)
            for item in page.get("Items", []):
                lease = _from_item(item)
                if lease.key.startswith(prefixes):
                    out[lease.key] = lease
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def create(self, lease: Lease) -> bool:
        item: dict[str, Any] = {
            "lease_key": {"S": lease.key},
            "stream": {"S": lease.stream},
            "shard_id": {"S": lease.shard_id},
            "parents": {"L": [{"S": p} for p in lease.parents]},
            "counter": {"N": "0"},
        }
        if lease.checkpoint:
            item["checkpoint"] = {"S": lease.checkpoint}
        return self._conditional("put_item", Item=item, ConditionExpression="attribute_not_exists(lease_key)")

    def take(self, lease: Lease, owner: str) -> bool:
        """Take `lease` (free, expired or stolen) if its counter is still the one seen."""
        return self._bump(lease, owner, "SET #o = :me, #c = :next", "#c = :seen")

    def renew(self, lease: Lease, owner: str) -> bool:
        return self._bump(lease, owner, "SET #c = :next", "#o = :me AND #c = :seen")

    def _bump(self, lease: Lease, owner: str, update: str, condition: str) -> bool:
        """Move the lease's counter from the value seen to the next one, under `condition`."""
        return self._conditional(
            "update_item",
            Key={"lease_key": {"S": lease.key}},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames={"#o": "owner", "#c": "counter"},
            ExpressionAttributeValues={
                ":me": {"S": owner},
                ":seen": {"N": str(lease.counter)},
                ":next": {"N": str(lease.counter + 1)},
            },
        )

    def checkpoint(self, key: str, owner: str, value: str) -> bool:
        return self._conditional(
            "update_item",
            Key={"lease_key": {"S": key}},
            UpdateExpression="SET #k = :value",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner", "#k": "checkpoint"},
            ExpressionAttributeValues={":me": {"S": owner}, ":value": {"S": value}},
        )

    def release(self, key: str, owner: str) -> bool:
        return self._conditional(
            "update_item",
            Key={"lease_key": {"S": key}},
            UpdateExpression="REMOVE #o SET #c = #c + :one",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner", "#c": "counter"},
            ExpressionAttributeValues={":me": {"S": owner}, ":one": {"N": "1"}},
        )

    def _conditional(self, operation: str, **request: Any) -> bool:
        """One conditional write: False when its condition did not hold (someone else moved the
        lease), every other failure mapped into the project's tree."""
        with _sdk_errors(f"dynamodb.{operation}"):
            try:
                getattr(self._client, operation)(TableName=self.name, **request)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    return False
                raise
        return True


def _from_item(item: Mapping[str, Any]) -> Lease:
    return Lease(
        key=item["lease_key"]["S"],
        stream=item.get("stream", {}).get("S", ""),
        shard_id=item.get("shard_id", {}).get("S", ""),
        parents=tuple(p["S"] for p in item.get("parents", {}).get("L", [])),
        owner=item["owner"]["S"] if "owner" in item else None,
        counter=int(item.get("counter", {}).get("N", "0")),
        checkpoint=item["checkpoint"]["S"] if "checkpoint" in item else None,
    )


class LeaseCoordinator(CheckpointStore):
    """This worker's side of the lease protocol, and the Kinesis source's checkpoint store.

    `start()` runs the heartbeat on a thread of its own (so a long batch never lets a lease
    lapse); `owned()` is what the source may read; `close()` releases what is held (call it
    after the last checkpoint). `tick()` is one heartbeat, for tests."""

    def __init__(
        self,
        table: LeaseTable,
        owner: str,
        prefixes: Iterable[str],
        *,
        failover_seconds: float,
        seed: CheckpointStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = table
        self.owner = owner
        self._prefixes = tuple(prefixes)
        self.failover_seconds = failover_seconds
        self._seed = seed
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        #: key -> (counter seen, when it was first seen at that value), on this worker's clock
        self._seen: dict[str, tuple[int, float]] = {}
        self._owned: dict[str, Lease] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: FatalError | None = None
        #: leases taken from a live owner, and from a dead (expired) one (tests, logs)
        self.stolen = 0
        self.taken_over = 0

    # -- shards the source found ---------------------------------------------------------

    def register(self, stream: str, shard_id: str, parents: Iterable[str], key: str) -> None:
        """Create the lease of a discovered shard unless it exists; its first checkpoint
        comes from the seed store (the checkpoints written before leases were on)."""
        with self._lock:
            if key in self._leases:
                return
        checkpoint = self._seed.get_checkpoint(key) if self._seed is not None else None
        self._table.create(Lease(key, stream, shard_id, tuple(parents), checkpoint=checkpoint))

    # -- the heartbeat -------------------------------------------------------------------

    def tick(self) -> None:
        """Renew what is held, then take (or steal) up to the fair share."""
        now = self._clock()
        leases = self._table.scan(self._prefixes)
        with self._lock:
            owned = dict(self._owned)
        for key, mine in owned.items():
            current = leases.get(key)
            if current is None or current.owner != self.owner or current.counter != mine.counter:
                self._lose(key, "taken by another worker")
                continue
            if self._table.renew(current, self.owner):
                renewed = replace(current, counter=current.counter + 1)
                leases[key] = renewed
                with self._lock:
                    self._owned[key] = replace(renewed, checkpoint=self._owned.get(key, renewed).checkpoint)
            else:
                self._lose(key, "renewal refused")
        for key, lease in leases.items():
            seen = self._seen.get(key)
            if seen is None or seen[0] != lease.counter:
                self._seen[key] = (lease.counter, now)
        with self._lock:
            self._leases = leases
            held = {k for k, v in self._owned.items() if leases.get(k, v).checkpoint != SHARD_END}
        ready = eligible(leases)
        expired = {
            k
            for k in ready
            if leases[k].owner is not None and now - self._seen[k][1] >= self.failover_seconds
        }
        live_owners = {leases[k].owner for k in ready if leases[k].owner is not None and k not in expired}
        live_owners.add(self.owner)
        target = fair_share(len(ready), len(live_owners))
        free = sorted(k for k in ready - held if leases[k].owner is None or k in expired)
        for key in free:
            if len(held) >= target:
                break
            if self._take(leases[key]):
                held.add(key)
                if key in expired:
                    self.taken_over += 1
                    log.warning(
                        "took over lease %s of %s (not renewed in %.1fs)",
                        key,
                        leases[key].owner,
                        self.failover_seconds,
                    )
        if len(held) < target:
            counts: dict[str, list[str]] = {}
            for key in ready - held - expired:
                owner = leases[key].owner
                if owner is not None and owner != self.owner:
                    counts.setdefault(owner, []).append(key)
            busiest = max(counts.items(), key=lambda kv: (len(kv[1]), kv[0]), default=None)
            if busiest is not None and len(busiest[1]) > target:
                victim = sorted(busiest[1])[0]
                if self._take(leases[victim]):
                    self.stolen += 1
                    log.info("stole lease %s from %s (share %d)", victim, busiest[0], target)

    def _take(self, lease: Lease) -> bool:
        if not self._table.take(lease, self.owner):
            return False
        with self._lock:
            self._owned[lease.key] = replace(lease, owner=self.owner, counter=lease.counter + 1)
        return True

    def _lose(self, key: str, why: str) -> None:
        with self._lock:
            self._owned.pop(key, None)
        log.warning("lost lease %s: %s", key, why)

    def start(self) -> LeaseCoordinator:
        self.tick()

        def beat() -> None:
            while not self._stop.wait(self.failover_seconds / 3):
                try:
                    self.tick()
                except RetryableError as exc:
                    log.warning("lease heartbeat failed: %s", exc)
                except FatalError as exc:  # auth, a missing table: the worker must stop
                    log.error("lease heartbeat failed: %s", exc)
                    self._failure = exc
                    return

        self._thread = threading.Thread(target=beat, name="kinesis-leases", daemon=True)
        self._thread.start()
        return self

    # -- what the source asks ------------------------------------------------------------

    def owned(self) -> dict[str, str | None]:
        """key -> checkpoint of every lease held now. Raises the `FatalError` that stopped
        the heartbeat (auth, a missing table), so the worker stops instead of idling."""
        if self._failure is not None:
            raise self._failure
        with self._lock:
            return {k: v.checkpoint for k, v in self._owned.items()}

    def get_checkpoint(self, name: str) -> str | None:
        with self._lock:
            lease = self._owned.get(name) or self._leases.get(name)
        return lease.checkpoint if lease is not None else None

    def set_checkpoint(self, name: str, value: str) -> None:
        """Write a checkpoint into the lease item, only while this worker holds the lease;
        a lost lease's checkpoint is dropped (its new owner reads those records again)."""
        if self._table.checkpoint(name, self.owner, value):
            with self._lock:
                if name in self._owned:
                    self._owned[name] = replace(self._owned[name], checkpoint=value)
            if value == SHARD_END:
                # a finished shard needs no owner; releasing it lets its children be taken
                with self._lock:
                    self._owned.pop(name, None)
                self._table.release(name, self.owner)
            return
        self._lose(name, "checkpoint refused")

    def close(self) -> None:
        """Stop the heartbeat and release every lease held (after the last checkpoint)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            held = list(self._owned)
            self._owned.clear()
        for key in held:
            try:
                self._table.release(key, self.owner)
            except (RetryableError, FatalError) as exc:
                log.warning("could not release lease %s: %s", key, exc)


def open_coordinator(
    settings: Settings, *, application: str, seed: CheckpointStore | None
) -> LeaseCoordinator:
    """This process's coordinator over the lease table (created when missing) for the
    arrivals streams of `settings.tenants`; call `start()` once the source registered its
    shards. The owner name is the worker id plus a random suffix: two processes started
    with one id must never share leases."""
    table = open_lease_table(settings)
    table.ensure()
    streams = [kinesis_stream("arrivals", validate_tenant(t)) for t in settings.tenants]
    return LeaseCoordinator(
        table,
        f"{settings.worker_id}:{uuid.uuid4().hex[:8]}",
        [checkpoint_name(application, stream, "") for stream in streams],
        failover_seconds=settings.kinesis.failover_seconds,
        seed=seed,
    )


def open_lease_table(settings: Settings) -> LeaseTable:
    session = boto3.session.Session()
    options: dict[str, Any] = {}
    endpoint = settings.kinesis.dynamodb_endpoint_url or settings.kinesis.endpoint_url
    if endpoint and session.get_credentials() is None:
        options.update(aws_access_key_id="audioguard-local", aws_secret_access_key="audioguard-local")
    client = session.client(
        "dynamodb",
        region_name=settings.kinesis.region,
        endpoint_url=endpoint,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=5, read_timeout=10
        ),
        **options,
    )
    return LeaseTable(client, settings.kinesis.lease_table)
