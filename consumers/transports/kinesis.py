"""AWS Kinesis Data Streams behind the Source/Sink interface (the only module importing boto3
for Kinesis).

Streams (see consumers.tenancy): `audioguard-arrivals-<tenant>`,
`audioguard-verdicts-<tenant>`, `audioguard-dlq-<tenant>`; `provision_kinesis` creates them.

Source: shard discovery (ListShards, repeated every `_DISCOVERY_SECONDS`), one shard
iterator per shard, GetRecords of up to `_FETCH_LIMIT` records at most once per shard per
`kinesis.poll_interval_seconds` (Kinesis allows 5 a second) into a per-shard buffer that
`poll` hands out round-robin across the shards of unpaused tenants. A
throttled or failing GetRecords (ProvisionedThroughputExceeded -> `RetryableError`,
mapped once in `_sdk_errors`) backs that shard off exponentially with jitter; the other
shards go on. Ack tokens are (stream, shard id, sequence number). A shard's checkpoint
advances only across a contiguous run of acked records, and is written to the
checkpoint store inside `ack`, which the pipeline calls only once the verdicts (or dead
letters) of those records are durable. A restarted worker resumes AFTER_SEQUENCE_NUMBER
its checkpoint (TRIM_HORIZON when there is none), so at most the records after the last
contiguous ack are delivered again, and the verdict store answers them.

Sink: PutRecords in batches of up to 500 records / 5 MiB per stream. When
FailedRecordCount > 0, exactly the failed entries are sent again, with backoff, up to
`settings.retry.attempts` calls; a record that never succeeds fails its future with
`RetryableError("partial_publish")`. Kinesis records have no headers, so a dead letter is
the DeadLetter JSON with `payload_b64` (the pipeline builds it that way for Kinesis) and
a verdict record is the verdict JSON; the partition key is the content id. A re-sent
record may land after records that followed it in the batch (Kinesis orders by arrival):
harmless for verdicts, one per content and identical when repeated.

Resharding, and its limits:
- a child shard (split or merge) is read only after all of its parents were read to
  their end and every record of theirs was acked (then their checkpoint is `SHARD_END`),
  so per-content ordering survives a reshard;
- a parent that aged out of the stream's retention is treated as finished;
- without leases (`kinesis.leases` off, the default) every worker reads every shard of
  its tenants' streams: two workers on one stream are safe (idempotent verdicts) but do
  the work twice. With leases on, the shards are shared through a DynamoDB lease table
  (`consumers.transports.kinesis_leases`, passed in as `leases`): the source reads only
  the shards whose lease it holds, its checkpoints go into the lease items, a lost lease
  forgets that shard's records in flight, and `close` checkpoints, then releases;
- a worker down for longer than the stream's retention (24 h by default) loses the
  records that expired: Kinesis deletes them, no checkpoint can bring them back.

This module must never ack or checkpoint on its own initiative (only `Source.ack`
checkpoints), never checkpoint past an unacked record, and never let a botocore
exception escape: every SDK error is mapped once, by `_map_error`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from consumers.tenancy import kinesis_stream, validate_tenant
from consumers.transport import AckToken, Message, MessageRejected, OutRecord, Sink, Source
from services.errors import AudioguardError, FatalError, RetryableError
from services.retry import jittered
from services.settings import Settings

__all__ = [
    "SHARD_END",
    "CheckpointStore",
    "ShardLeases",
    "KinesisSink",
    "KinesisSource",
    "checkpoint_name",
    "open_kinesis",
    "provision_kinesis",
    "read_stream",
]

log = logging.getLogger(__name__)

#: the checkpoint of a shard that was read to its end and fully acked
SHARD_END = "SHARD_END"
#: how often the shard list is refreshed (new shards after a reshard)
_DISCOVERY_SECONDS = 10.0
#: PutRecords limits: records and bytes per call, bytes per record (data + partition key)
_PUT_MAX_RECORDS = 500
_PUT_MAX_BYTES = 5 * 1024 * 1024
#: records asked of one GetRecords; what one poll cannot hand out waits in the shard's buffer
_FETCH_LIMIT = 1000

_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
    "RequestLimitExceeded",
}
_AUTH = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "KMSAccessDeniedException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}
_UNAVAILABLE = {"InternalFailure", "ServiceUnavailable", "InternalServerError", "KMSNotFoundException"}


@runtime_checkable
class CheckpointStore(Protocol):
    """Where shard checkpoints live. `services.store.VerdictStore` (memory, SQLite, Redis)
    provides exactly this; both methods raise `RetryableError` on transient trouble."""

    def get_checkpoint(self, name: str) -> str | None: ...

    def set_checkpoint(self, name: str, value: str) -> None: ...


@runtime_checkable
class ShardLeases(Protocol):
    """Which shards this worker may read, when several share a stream
    (`consumers.transports.kinesis_leases.LeaseCoordinator`, which is also the checkpoint
    store then). It alone decides whether a child's parents are finished."""

    def register(self, stream: str, shard_id: str, parents: Iterable[str], key: str) -> None: ...

    def owned(self) -> dict[str, str | None]: ...

    def close(self) -> None: ...


def _unpack(token: AckToken) -> tuple[str, str, str]:
    if not isinstance(token, tuple) or len(token) != 3:
        raise ValueError(f"not a Kinesis ack token: {token!r}")
    return str(token[0]), str(token[1]), str(token[2])


def checkpoint_name(application: str, stream: str, shard_id: str) -> str:
    """The store key of one shard's checkpoint; `application` separates independent readers
    of the same stream (like a Kafka consumer group)."""
    return f"kinesis/{application}/{stream}/{shard_id}"


# --------------------------------------------------------------------------------------
# the one place SDK errors become audioguard errors


def _map_error(exc: BaseException, operation: str) -> AudioguardError:
    if isinstance(exc, AudioguardError):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{operation}: {code}: {exc}"
        if code in _THROTTLING:
            return RetryableError("throttled", text)
        if code == "ExpiredIteratorException":
            return RetryableError("expired_iterator", text)
        if code == "ResourceNotFoundException":
            return FatalError("missing_topic", text)
        if code in _AUTH or status in (401, 403):
            return FatalError("auth", text)
        if code in _UNAVAILABLE or status >= 500:
            return RetryableError("unavailable", text)
        if code == "ResourceInUseException":
            return RetryableError("resource_in_use", text)
        return FatalError("bad_request", text)
    if isinstance(exc, NoCredentialsError):
        return FatalError("auth", f"{operation}: {exc}")
    if isinstance(exc, BotoCoreError | ConnectionError | TimeoutError):
        # endpoint unreachable, connection reset, read timeout
        return RetryableError("unavailable", f"{operation}: {type(exc).__name__}: {exc}")
    return FatalError("kinesis_client", f"{operation}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _sdk_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except AudioguardError:
        raise
    except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as exc:
        raise _map_error(exc, operation) from exc


def _client(settings: Settings) -> Any:
    session = boto3.session.Session()
    options: dict[str, Any] = {}
    if settings.kinesis.endpoint_url and session.get_credentials() is None:
        # a local endpoint (moto) accepts any credentials; real AWS uses the default chain
        options.update(aws_access_key_id="audioguard-local", aws_secret_access_key="audioguard-local")
    return session.client(
        "kinesis",
        region_name=settings.kinesis.region,
        endpoint_url=settings.kinesis.endpoint_url,
        config=Config(
            # our own backoff owns retries (per shard, per failed record); botocore's would
            # hide throttling from it
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=10,
        ),
        **options,
    )


# --------------------------------------------------------------------------------------
# provisioning


def provision_kinesis(settings: Settings, tenants: list[str], *, timeout: float = 60.0) -> None:
    """Create, idempotently, the arrivals / verdicts / dlq streams of each tenant with
    `kinesis.shard_count` shards, and wait until they are ACTIVE."""
    client = _client(settings)
    names = [
        kinesis_stream(kind, validate_tenant(t)) for t in tenants for kind in ("arrivals", "verdicts", "dlq")
    ]
    try:
        for name in names:
            try:
                with _sdk_errors("create_stream"):
                    client.create_stream(StreamName=name, ShardCount=settings.kinesis.shard_count)
            except RetryableError as exc:
                if exc.reason != "resource_in_use":  # it exists already
                    raise
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                with _sdk_errors("describe_stream_summary"):
                    summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
                if summary["StreamStatus"] == "ACTIVE":
                    break
                if time.monotonic() > deadline:
                    raise RetryableError("unavailable", f"stream {name} not ACTIVE after {timeout:.0f}s")
                time.sleep(0.2)
    finally:
        client.close()


# --------------------------------------------------------------------------------------
# source


@dataclass
class _Shard:
    tenant: str
    stream: str
    shard_id: str
    parents: tuple[str, ...]
    checkpoint_key: str
    iterator: str | None = None
    #: the shard was read to its end (GetRecords returned no NextShardIterator)
    exhausted: bool = False
    #: read to its end and every record acked: SHARD_END is (or is to be) checkpointed
    finished: bool = False
    #: delivered and not yet checkpointed, in delivery (= sequence) order
    pending: deque[int] = field(default_factory=deque)
    pending_set: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    #: fetched and not handed out yet (a paused tenant's, or beyond one poll's share)
    buffer: deque[Message] = field(default_factory=deque)
    #: the last sequence handed out (where a refreshed iterator continues)
    last_delivered: str | None = None
    #: the last checkpoint read or written, and one computed but not yet written
    checkpoint: str | None = None
    unwritten: str | None = None
    #: with leases: this worker holds the shard's lease (always True without leases)
    owned: bool = True
    next_fetch: float = 0.0
    backoff: float = 0.0


class KinesisSource(Source):
    """Reads the arrivals streams of `tenants`; see the module docstring for the rules."""

    def __init__(
        self,
        settings: Settings,
        tenants: Sequence[str],
        checkpoints: CheckpointStore,
        *,
        application: str = "audioguard-workers",
        client: Any | None = None,
        leases: ShardLeases | None = None,
    ) -> None:
        if not tenants:
            raise FatalError("bad_config", "the Kinesis source needs at least one tenant (settings.tenants)")
        self._settings = settings
        self._tenants = [validate_tenant(t) for t in tenants]
        self._streams = {kinesis_stream("arrivals", t): t for t in self._tenants}
        self._checkpoints = checkpoints
        self._leases = leases
        self._application = application
        self._client = client if client is not None else _client(settings)
        self._shards: dict[tuple[str, str], _Shard] = {}
        self._paused: set[str] = set()
        self._next_discovery = 0.0
        self._rr = 0
        self._idle = max(settings.kinesis.poll_interval_seconds, 0.0)
        self._lock = threading.RLock()
        self._discover()

    # -- shards -------------------------------------------------------------------------

    def _discover(self) -> None:
        """Refresh the shard list of every stream (new children after a reshard)."""
        for stream, tenant in self._streams.items():
            shards: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = {"StreamName": stream}
            while True:
                with _sdk_errors("list_shards"):
                    page = self._client.list_shards(**kwargs)
                shards.extend(page.get("Shards", []))
                token = page.get("NextToken")
                if not token:
                    break
                kwargs = {"NextToken": token}
            for shard in shards:
                key = (stream, shard["ShardId"])
                if key in self._shards:
                    continue
                parents = tuple(
                    p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
                )
                state = _Shard(
                    tenant=tenant,
                    stream=stream,
                    shard_id=shard["ShardId"],
                    parents=parents,
                    checkpoint_key=checkpoint_name(self._application, stream, shard["ShardId"]),
                )
                if self._leases is not None:
                    # read once its lease is held (`_sync_leases`), from the lease item
                    state.owned = False
                    self._leases.register(stream, state.shard_id, parents, state.checkpoint_key)
                else:
                    state.checkpoint = self._checkpoints.get_checkpoint(state.checkpoint_key)
                    if state.checkpoint == SHARD_END:
                        state.exhausted = state.finished = True
                self._shards[key] = state
        self._next_discovery = time.monotonic() + _DISCOVERY_SECONDS

    def _sync_leases(self) -> None:
        """Start reading shards whose lease was gained (from the lease's checkpoint), and
        forget everything of shards whose lease was lost: their records in flight can no
        longer be checkpointed here, and their new owner reads them again."""
        assert self._leases is not None
        owned = self._leases.owned()
        for shard in self._shards.values():
            held = shard.checkpoint_key in owned
            if held and not shard.owned:
                shard.owned = True
                shard.checkpoint = owned[shard.checkpoint_key]
                shard.finished = shard.exhausted = shard.checkpoint == SHARD_END
                log.info("reading %s/%s from %s", shard.stream, shard.shard_id, shard.checkpoint)
            elif not held and shard.owned and not shard.finished:
                shard.owned = False
                shard.pending.clear()
                shard.pending_set.clear()
                shard.acked.clear()
                shard.buffer.clear()
                shard.iterator = shard.last_delivered = shard.unwritten = None
                shard.exhausted = False
                log.info("stopped reading %s/%s (lease gone)", shard.stream, shard.shard_id)

    def _parents_done(self, shard: _Shard) -> bool:
        if self._leases is not None:
            return True  # a child's lease is only taken once its parents' are SHARD_END
        for parent in shard.parents:
            state = self._shards.get((shard.stream, parent))
            # a parent no longer listed has aged out of retention: nothing left to read
            if state is not None and not state.finished:
                return False
        return True

    def _iterator(self, shard: _Shard) -> str:
        position = shard.last_delivered or shard.checkpoint
        kwargs: dict[str, Any] = {"StreamName": shard.stream, "ShardId": shard.shard_id}
        if position:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=position)
        else:
            kwargs.update(ShardIteratorType="TRIM_HORIZON")
        with _sdk_errors("get_shard_iterator"):
            return str(self._client.get_shard_iterator(**kwargs)["ShardIterator"])

    def _fetch(self, shard: _Shard) -> None:
        """One GetRecords on `shard` into its buffer; a retryable failure backs this shard off."""
        now = time.monotonic()
        try:
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
            with _sdk_errors("get_records"):
                response = self._client.get_records(ShardIterator=shard.iterator, Limit=_FETCH_LIMIT)
        except RetryableError as exc:
            if exc.reason == "expired_iterator":
                # a fresh iterator continues after the last record handed out, so what was
                # buffered is read again: forget it
                shard.iterator = None
                shard.buffer.clear()
                shard.next_fetch = now
                return
            retry = self._settings.retry
            shard.backoff = min(
                max(shard.backoff * 2, retry.initial_backoff_seconds), max(retry.max_backoff_seconds, 0.001)
            )
            shard.next_fetch = now + jittered(shard.backoff)
            log.warning(
                "GetRecords on %s/%s failed (%s); backing off %.2fs",
                shard.stream,
                shard.shard_id,
                exc,
                shard.backoff,
            )
            return
        shard.backoff = 0.0
        shard.iterator = response.get("NextShardIterator")
        # at most one GetRecords per shard per poll interval (Kinesis allows 5 a second)
        shard.next_fetch = now + self._idle
        for record in response.get("Records", []):
            sequence = str(record["SequenceNumber"])
            arrived = record.get("ApproximateArrivalTimestamp")
            timestamp = arrived.timestamp() if arrived is not None else None
            shard.buffer.append(
                Message(
                    token=(shard.stream, shard.shard_id, sequence),
                    tenant=shard.tenant,
                    topic=shard.stream,
                    value=bytes(record["Data"]),
                    key=str(record.get("PartitionKey", "")).encode() or None,
                    timestamp=timestamp,
                    coordinates={
                        "transport": "kinesis",
                        "topic": shard.stream,
                        "shard_id": shard.shard_id,
                        "sequence_number": sequence,
                        "timestamp": timestamp,
                    },
                )
            )
        if shard.iterator is None:
            shard.exhausted = True
            self._maybe_finish(shard)

    @staticmethod
    def _hand_out(shard: _Shard, limit: int) -> list[Message]:
        """Up to `limit` buffered records of `shard`, now pending until acked."""
        out: list[Message] = []
        while shard.buffer and len(out) < limit:
            message = shard.buffer.popleft()
            sequence = str(message.coordinates["sequence_number"])
            shard.pending.append(int(sequence))
            shard.pending_set.add(int(sequence))
            shard.last_delivered = sequence
            out.append(message)
        return out

    # -- Source -------------------------------------------------------------------------

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            if time.monotonic() >= self._next_discovery:
                try:
                    self._discover()
                except RetryableError as exc:
                    log.warning("shard discovery failed: %s", exc)
                    self._next_discovery = time.monotonic() + min(_DISCOVERY_SECONDS, 1.0)
            if self._leases is not None:
                self._sync_leases()
            out: list[Message] = []
            while True:
                ready = [
                    s
                    for s in self._shards.values()
                    if s.owned
                    and s.tenant not in self._paused
                    and (s.buffer or not s.exhausted)
                    and self._parents_done(s)
                ]
                # rotate the start so no shard (and no tenant) is always served first
                if ready:
                    self._rr = (self._rr + 1) % len(ready)
                    ready = ready[self._rr :] + ready[: self._rr]
                now = time.monotonic()
                for shard in ready:
                    if not shard.buffer and not shard.exhausted and shard.next_fetch <= now:
                        self._fetch(shard)
                share = max(1, max_messages // max(1, len(ready)))
                for shard in ready:
                    out.extend(self._hand_out(shard, min(share, max_messages - len(out))))
                for shard in ready:  # what the fair shares left over
                    out.extend(self._hand_out(shard, max_messages - len(out)))
                if out:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                waits = [s.next_fetch - time.monotonic() for s in ready if not s.exhausted]
                pause = min([w for w in waits if w > 0] or [self._idle or 0.05])
                time.sleep(max(0.001, min(pause, remaining)))

    def ack(self, tokens: Sequence[AckToken]) -> None:
        """Mark records finished and checkpoint every shard whose contiguous acked run grew.
        Raises `RetryableError` when the checkpoint store cannot be written; the checkpoint
        is then written by the next `ack` (or `close`). Unknown tokens are ignored."""
        with self._lock:
            touched: dict[tuple[str, str], _Shard] = {}
            for token in tokens:
                stream, shard_id, sequence = _unpack(token)
                shard = self._shards.get((stream, shard_id))
                number = int(sequence)
                if shard is None or number not in shard.pending_set:
                    continue
                shard.acked.add(number)
                touched[(stream, shard_id)] = shard
            for shard in touched.values():
                last: int | None = None
                while shard.pending and shard.pending[0] in shard.acked:
                    last = shard.pending.popleft()
                    shard.acked.discard(last)
                    shard.pending_set.discard(last)
                if last is not None:
                    shard.unwritten = str(last)
                self._maybe_finish(shard)
            self._write_checkpoints(touched.values())

    def _maybe_finish(self, shard: _Shard) -> None:
        if shard.exhausted and not shard.buffer and not shard.pending and not shard.finished:
            shard.finished = True
            shard.unwritten = SHARD_END

    def _write_checkpoints(self, shards: Iterable[_Shard]) -> None:
        for shard in shards:
            if shard.unwritten is None:
                continue
            self._checkpoints.set_checkpoint(shard.checkpoint_key, shard.unwritten)
            shard.checkpoint, shard.unwritten = shard.unwritten, None

    def drop(self, tokens: Sequence[AckToken]) -> None:
        """Forget these records: their shard is rewound to the earliest of them, so they
        (and the records after them) are read again."""
        with self._lock:
            for token in tokens:
                stream, shard_id, sequence = _unpack(token)
                shard = self._shards.get((stream, shard_id))
                number = int(sequence)
                if shard is None or number not in shard.pending_set:
                    continue
                keep = deque(n for n in shard.pending if n < number)
                for gone in [n for n in shard.pending if n >= number]:
                    shard.pending_set.discard(gone)
                    shard.acked.discard(gone)
                shard.pending = keep
                shard.last_delivered = str(keep[-1]) if keep else shard.checkpoint
                if shard.last_delivered == SHARD_END:
                    shard.last_delivered = None
                shard.iterator = None
                shard.buffer.clear()
                shard.exhausted = False
                shard.next_fetch = 0.0

    def pause(self, tenants: Iterable[str]) -> None:
        with self._lock:
            self._paused.update(t for t in tenants if t in self._tenants)

    def resume(self, tenants: Iterable[str]) -> None:
        with self._lock:
            self._paused.difference_update(tenants)

    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def in_flight(self) -> int:
        """Records delivered and not yet checkpointed."""
        with self._lock:
            return sum(len(s.pending) for s in self._shards.values())

    def checkpoints(self) -> dict[str, str | None]:
        """shard id -> the checkpoint last written (for tests and `audioguard` status output)."""
        with self._lock:
            return {f"{s.stream}/{s.shard_id}": s.checkpoint for s in self._shards.values()}

    def close(self, timeout: float) -> None:
        """Write any checkpoint a failed ack left unwritten; nothing is acked here."""
        with self._lock:
            try:
                self._write_checkpoints(self._shards.values())
            except AudioguardError as exc:
                log.warning("could not write Kinesis checkpoints on close: %s", exc)
            if self._leases is not None:
                # checkpoint first (above), then hand the shards over
                self._leases.close()
            with contextlib.suppress(Exception):
                self._client.close()


# --------------------------------------------------------------------------------------
# sink


@dataclass
class _Pending:
    record: OutRecord
    stream: str
    entry: dict[str, Any]
    size: int
    future: Future[None]


def _partition_key(record: OutRecord) -> str:
    key = record.ordering_key if record.ordering_key is not None else record.key.decode("utf-8", "replace")
    if not key:
        return "-"
    # Kinesis partition keys are 1..256 Unicode characters: hash longer ones (stable)
    return key if len(key) <= 256 else hashlib.sha256(key.encode()).hexdigest()


class KinesisSink(Sink):
    """PutRecords to `audioguard-<destination>-<tenant>` from one sender thread.

    Every future resolves only after Kinesis accepted its record; partial success is
    retried for exactly the failed records and is a failure when it never completes."""

    def __init__(self, settings: Settings, *, max_outstanding: int = 2000, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client if client is not None else _client(settings)
        self._max_outstanding = max_outstanding
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._outstanding = 0
        self._closed = False
        #: PutRecords calls made and records re-sent after a partial failure (tests, metrics)
        self.calls = 0
        self.resent = 0
        self._thread = threading.Thread(target=self._run, name="kinesis-sink", daemon=True)
        self._thread.start()

    def publish(self, record: OutRecord) -> Future[None]:
        future: Future[None] = Future()
        if record.destination == "retry":
            # Kinesis retries in place (with backoff); there are no retry streams
            future.set_exception(FatalError("unsupported_destination", "Kinesis has no retry streams"))
            return future
        stream = kinesis_stream(record.destination, record.tenant)
        key = _partition_key(record)
        size = len(record.value) + len(key.encode())
        if size > 1024 * 1024:
            future.set_exception(
                FatalError("record_too_large", f"{size} bytes exceed Kinesis' 1 MiB per record")
            )
            return future
        with self._cond:
            if self._closed:
                future.set_exception(FatalError("closed", "the Kinesis sink is closed"))
                return future
            if self._outstanding >= self._max_outstanding:
                raise MessageRejected(f"{self._outstanding} Kinesis records outstanding")
            self._outstanding += 1
            self._queue.append(
                _Pending(record, stream, {"Data": record.value, "PartitionKey": key}, size, future)
            )
            self._cond.notify_all()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                # one batch for the stream at the head of the queue, in order
                stream = self._queue[0].stream
                batch: list[_Pending] = []
                size = 0
                rest: deque[_Pending] = deque()
                while self._queue:
                    item = self._queue.popleft()
                    fits = len(batch) < _PUT_MAX_RECORDS and size + item.size <= _PUT_MAX_BYTES
                    if item.stream == stream and fits:
                        batch.append(item)
                        size += item.size
                    else:
                        rest.append(item)
                self._queue = rest
            try:
                self._put(stream, batch)
            except BaseException as exc:  # never lose a future, whatever happened
                error = exc if isinstance(exc, AudioguardError) else _map_error(exc, "put_records")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            finally:
                with self._cond:
                    self._outstanding -= len(batch)
                    self._cond.notify_all()

    def _put(self, stream: str, batch: list[_Pending]) -> None:
        retry = self._settings.retry
        todo = batch
        last_error: AudioguardError | None = None
        backoff = retry.initial_backoff_seconds
        for attempt in range(max(retry.attempts, 1)):
            if attempt:
                time.sleep(jittered(backoff))
                backoff = min(backoff * 2, retry.max_backoff_seconds)
            try:
                self.calls += 1
                with _sdk_errors("put_records"):
                    response = self._client.put_records(StreamName=stream, Records=[p.entry for p in todo])
            except RetryableError as exc:
                last_error = exc  # the whole call failed: send the same records again
                continue
            failed: list[_Pending] = []
            codes: dict[str, int] = {}
            for item, result in zip(todo, response.get("Records", []), strict=True):
                if result.get("ErrorCode"):
                    failed.append(item)
                    codes[str(result["ErrorCode"])] = codes.get(str(result["ErrorCode"]), 0) + 1
                else:
                    item.future.set_result(None)
            if not failed:
                return
            self.resent += len(failed)
            last_error = RetryableError(
                "partial_publish",
                f"PutRecords to {stream}: {len(failed)} of {len(todo)} records failed ({codes})",
            )
            log.warning("%s; re-sending exactly those", last_error)
            todo = failed
        assert last_error is not None
        for item in todo:
            item.future.set_exception(last_error)

    def poll(self) -> None:
        """Delivery results arrive on the sender thread: nothing to serve here."""

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._outstanding:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._outstanding

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self._client.close()


def open_kinesis(
    settings: Settings, checkpoints: CheckpointStore | None = None, leases: ShardLeases | None = None
) -> tuple[Source, Sink]:
    """The Source and Sink of `settings.tenants` on Kinesis. Checkpoints go to `checkpoints`,
    else to the verdict store's backend named by `settings.store.url` (memory:// keeps them
    only for the life of the process: use sqlite:// or redis:// to resume after a restart).
    With `leases` the source reads only the shards whose lease it holds (pass the lease
    coordinator as `checkpoints` too: checkpoints then live in the lease items)."""
    if checkpoints is None:
        from services.store import open_store

        checkpoints = open_store(settings.store.url, settings.store.ttl_seconds)
    source = KinesisSource(settings, settings.tenants, checkpoints, leases=leases)
    return source, KinesisSink(settings)


def read_stream(
    settings: Settings,
    stream: str,
    *,
    timeout: float = 10.0,
    idle: float = 2.0,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Yield (partition key, data, no headers) of every record of `stream` from TRIM_HORIZON,
    shard after shard as they come. Stops after `idle` seconds without a record (or
    `timeout` overall) unless `follow`, in which case it runs until `stop()` returns True.
    For tools, the demo and tests; it writes no checkpoint."""
    client = _client(settings)
    iterators: dict[str, str | None] = {}
    started = last = time.monotonic()
    try:
        while True:
            if stop is not None and stop():
                return
            now = time.monotonic()
            if not follow and (now - last > idle or now - started > timeout):
                return
            with _sdk_errors("list_shards"):
                shards = client.list_shards(StreamName=stream).get("Shards", [])
            for shard in shards:
                shard_id = shard["ShardId"]
                if shard_id not in iterators:
                    with _sdk_errors("get_shard_iterator"):
                        iterators[shard_id] = client.get_shard_iterator(
                            StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                        )["ShardIterator"]
            got = False
            for shard_id, iterator in list(iterators.items()):
                if iterator is None:
                    continue
                try:
                    with _sdk_errors("get_records"):
                        response = client.get_records(ShardIterator=iterator, Limit=1000)
                except RetryableError:
                    continue
                iterators[shard_id] = response.get("NextShardIterator")
                for record in response.get("Records", []):
                    got = True
                    yield str(record.get("PartitionKey", "")).encode() or None, bytes(record["Data"]), []
            if got:
                last = time.monotonic()
            else:
                time.sleep(max(settings.kinesis.poll_interval_seconds, 0.05))
    finally:
        client.close()


def read_shard_records(
    settings: Settings, stream: str, after: Callable[[str], str | None], *, timeout: float = 60.0
) -> Iterator[Message]:
    """Every record of `stream` after each shard's position `after(shard_id)` (None: from
    TRIM_HORIZON), shard by shard, up to the shard's head when it is read; for tools (the DLQ
    tool). Token: (stream, shard_id, sequence number). Writes no checkpoint."""
    client = _client(settings)
    deadline = time.monotonic() + timeout
    try:
        with _sdk_errors("list_shards"):
            shards = client.list_shards(StreamName=stream).get("Shards", [])
        for shard in shards:
            shard_id = shard["ShardId"]
            position = after(shard_id)
            request: dict[str, Any] = {"StreamName": stream, "ShardId": shard_id}
            if position:
                request |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": position}
            else:
                request["ShardIteratorType"] = "TRIM_HORIZON"
            with _sdk_errors("get_shard_iterator"):
                iterator: str | None = client.get_shard_iterator(**request)["ShardIterator"]
            at_head = False
            while iterator and time.monotonic() < deadline:
                with _sdk_errors("get_records"):
                    response = client.get_records(ShardIterator=iterator, Limit=1000)
                records = response.get("Records", [])
                for record in records:
                    sequence = str(record["SequenceNumber"])
                    arrived = record.get("ApproximateArrivalTimestamp")
                    yield Message(
                        token=(stream, shard_id, sequence),
                        tenant="",
                        topic=stream,
                        value=bytes(record["Data"]),
                        key=str(record.get("PartitionKey", "")).encode() or None,
                        timestamp=arrived.timestamp() if arrived is not None else None,
                        coordinates={"shard_id": shard_id, "sequence_number": sequence},
                    )
                if not records and int(response.get("MillisBehindLatest", 0)) == 0:
                    at_head = True
                    break
                iterator = response.get("NextShardIterator")
            if iterator and not at_head:
                # a partial read must not pass for a short stream
                raise RetryableError("timeout", f"read {stream}: shard {shard_id} not at its head in time")
    finally:
        client.close()
