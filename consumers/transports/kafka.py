"""Kafka adapter (confluent-kafka): the only module that imports the Kafka client.

- `KafkaSource`: pattern subscription to `audioguard.arrivals.<tenant>` (or the configured
  tenants' topics), manual offsets: nothing is committed until `ack`, and then only across
  the contiguous run of finished offsets per partition (`commits.OffsetTracker`).
- `KafkaSink`: idempotent producer (acks=all); every publish returns a future that the
  delivery report resolves. A delivery error is never swallowed.
- `create_topics`, `read_topic`: provisioning and reading back, for the CLI and tests.

Kafka errors are mapped into `services.errors` in `_map_error`, and only there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumers.commits import OffsetTracker
from consumers.overflow import Spill, hold_or_spill
from consumers.partition_queues import PartitionQueues
from consumers.retry_topics import RETRY_PATTERN, RetryGate, is_retry_topic, retry_state
from consumers.tenancy import (
    KAFKA_ARRIVALS_PATTERN,
    SHARED_ARRIVALS_TOPIC,
    SharedTopic,
    TenantHold,
    kafka_topic,
    shared_topic,
    tenant_of_kafka_topic,
    tenant_of_overflow_topic,
    tenant_of_record,
)
from consumers.transport import AckToken, Message, MessageRejected, OutRecord, Sink, Source
from services.errors import AudioguardError, FatalError, RetryableError
from services.settings import KafkaSettings, Settings

__all__ = [
    "GroupReader",
    "KafkaSink",
    "KafkaSource",
    "committed_offsets",
    "create_topics",
    "end_offsets",
    "fencing_aborts_open_transactions",
    "group_instance_id",
    "open_kafka",
    "read_topic",
    "tenant_topics",
]

log = logging.getLogger("audioguard.kafka")
_librdkafka_log = logging.getLogger("audioguard.librdkafka")

_FATAL_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError._INVALID_ARG,
    KafkaError.INVALID_CONFIG,
    KafkaError._FATAL,
}


def _map_error(error: KafkaError, what: str) -> AudioguardError:
    """The one place Kafka errors become audioguard errors."""
    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART or error.code() == KafkaError._UNKNOWN_TOPIC:
        return FatalError("missing_topic", f"{what}: {error.str()}")
    if error.fatal() or error.code() in _FATAL_CODES:
        return FatalError("kafka_fatal", f"{what}: {error.str()}")
    return RetryableError("kafka_unavailable", f"{what}: {error.str()}")


def _client_config(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        # librdkafka's own log lines go through our structured logging, not raw stderr
        "logger": _librdkafka_log,
    }
    if settings.sasl_mechanism:
        config["sasl.mechanism"] = settings.sasl_mechanism
    if settings.sasl_username:
        config["sasl.username"] = settings.sasl_username
    if settings.sasl_password:
        config["sasl.password"] = settings.sasl_password.get_secret_value()
    config.update(settings.extra)
    return config


def _headers(record: Any) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes); librdkafka may hand back None or str values."""
    result = []
    for name, value in record.headers() or []:
        result.append((name, value.encode() if isinstance(value, str) else (value or b"")))
    return result


def group_instance_id(settings: KafkaSettings) -> str | None:
    """group.instance.id under static membership: the setting, else the pod's name (POD_NAME
    from the downward API, else HOSTNAME, which Kubernetes sets to the pod name)."""
    if not settings.static_membership:
        return None
    instance = settings.group_instance_id or os.environ.get("POD_NAME") or os.environ.get("HOSTNAME")
    if not instance:
        raise FatalError(
            "bad_config", "kafka.static_membership needs kafka.group_instance_id, POD_NAME or HOSTNAME"
        )
    return instance


def tenant_topics(
    tenants: Iterable[str], kinds: Iterable[str] = ("arrivals", "verdicts", "dlq")
) -> list[str]:
    return [kafka_topic(kind, tenant) for tenant in tenants for kind in kinds]


def create_topics(
    settings: KafkaSettings, topics: Sequence[str], partitions: int = 1, timeout: float = 30
) -> None:
    """Create topics that do not exist yet; existing ones are left alone."""
    admin = AdminClient(_client_config(settings))
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1) for topic in topics],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise _map_error(error, f"create topic {topic}") from exc


class KafkaSource(Source):
    """Consumes arrivals; commits only what the pipeline finished, contiguously."""

    def __init__(
        self,
        settings: KafkaSettings,
        tenants: Sequence[str] = (),
        *,
        on_revoke: Callable[[list[tuple[str, int]]], None] | None = None,
        retry_tiers: int = 0,
        transactional: bool = False,
        shared: SharedTopic | None = None,
        max_held: int = 500,
        spill_after: int = 100,
    ) -> None:
        # the shared arrivals topic (consumers.tenancy): a paused tenant's records are held
        # here; a tenant holding `spill_after` spills to its overflow topic (consumers.overflow);
        # past `max_held` held or unacknowledged the shared partitions' fetch is paused as well
        self._shared = shared
        self._tenant_hold = TenantHold()
        self._max_held = max(1, max_held)
        self._hold_paused: set[tuple[str, int]] = set()
        self._settings = settings
        self._spill = Spill(self._send_spill, spill_after)
        # created at the first spill: a worker whose shared tenants never flood has none
        self._spill_producer: Producer | None = None
        self._overflow_topics: dict[str, int] = {}  # topic -> partitions
        self._overflow: Consumer | None = None
        if transactional:
            # overflow offsets belong to another group than the transaction's offsets
            spill_after = 1 << 62
        config = _client_config(settings) | {
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": settings.heartbeat_interval_ms,
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "topic.metadata.refresh.interval.ms": settings.metadata_refresh_ms,
            "fetch.wait.max.ms": settings.fetch_wait_max_ms,
            # read only committed records: verdict topics may be written transactionally
            "isolation.level": "read_committed",
            # results of the asynchronous commits, delivered inside consume()
            "on_commit": self._committed,
            "partition.assignment.strategy": settings.assignment_strategy,
        }
        instance = group_instance_id(settings)
        if instance is not None:
            config["group.instance.id"] = instance
        # incremental callbacks hand over only the partitions that move (KIP-429)
        self._cooperative = settings.assignment_strategy == "cooperative-sticky"
        self._consumer = Consumer(config)
        self._tracker = OffsetTracker()
        # finished offsets are committed asynchronously at most this often (and synchronously
        # on revoke and close): a synchronous commit per loop turn was a broker round trip the
        # loop waited for on every turn
        self._commit_interval = settings.commit_interval_ms / 1000
        self._last_commit = 0.0
        self._assigned: set[tuple[str, int]] = set()
        self._paused_tenants: set[str] = set()
        self._on_revoke = on_revoke
        # exactly-once: offsets go through the producer's transaction, never consumer.commit
        self._transactional = transactional
        # retry partitions paused until their head record is due (consumers.retry_topics)
        self._gate = RetryGate()
        self._held: set[tuple[str, int]] = set()
        # fetched records per partition, handed out round robin (consumers.partition_queues);
        # a partition holding a whole poll's worth is paused until it is down to a share
        self._fair: PartitionQueues[tuple[str, int], Message] = PartitionQueues()
        self._full: set[tuple[str, int]] = set()
        #: how often a retry partition was paused for a head record that was not due
        self.retry_holds = 0
        topics = [kafka_topic("arrivals", t) for t in tenants] if tenants else [KAFKA_ARRIVALS_PATTERN]
        if shared is not None:
            topics.append(SHARED_ARRIVALS_TOPIC)
        if shared is not None and not transactional:
            # overflow partitions follow the shared partition they were spilled from: whoever
            # owns shared partition p reads partition p of every overflow topic, through a
            # consumer of its own (assigned, never subscribed), so a new overflow topic costs
            # no rebalance; it commits for the group `<group>.overflow`
            self._overflow = Consumer(
                {
                    k: v
                    for k, v in config.items()
                    if k not in ("group.instance.id", "partition.assignment.strategy")
                }
                | {"group.id": f"{settings.group_id}.overflow"}
            )
        if retry_tiers:
            retried = [*tenants, *sorted(shared.tenants)] if shared is not None else list(tenants)
            topics += (
                [kafka_topic("retry", t, tier) for t in retried for tier in range(retry_tiers)]
                if tenants
                else [RETRY_PATTERN]
            )
        self._consumer.subscribe(
            topics, on_assign=self._assigned_cb, on_revoke=self._revoked_cb, on_lost=self._lost_cb
        )

    # -- rebalance callbacks (run inside poll) ------------------------------------------
    # Cooperative: each callback gets only the partitions that move and the rest stay
    # assigned and consumed; eager: a revoke takes everything and an assign gives the new set.
    def _assigned_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # assign before pausing: a pause of a partition not assigned yet does not hold
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
        log.info(
            "partitions assigned", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]}
        )
        paused = [
            tp
            for tp in partitions
            if tenant_of_kafka_topic(tp.topic) in self._paused_tenants
            or (tp.topic, tp.partition) in self._held
            or (tp.topic == SHARED_ARRIVALS_TOPIC and self._hold_is_full())
        ]
        if paused:
            consumer.pause(paused)
        self._assign_overflow(
            [(tp.topic, tp.partition) for tp in partitions if tp.topic == SHARED_ARRIVALS_TOPIC]
        )

    def _revoked_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(consumer, partitions, commit=not self._transactional)

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The partitions already belong to someone else (session timed out, fenced): finish
        what the runner can, but commit nothing; the commit would be rejected with the old
        generation and the new owner re-reads from the group's committed offsets anyway."""
        log.warning(
            "partitions lost", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]}
        )
        self._give_up(consumer, partitions, commit=False)

    def _give_up(self, consumer: Consumer, partitions: list[TopicPartition], *, commit: bool) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        shared = {p for t, p in keys if t == SHARED_ARRIVALS_TOPIC}
        followers = [
            k for k in self._assigned if tenant_of_overflow_topic(k[0]) is not None and k[1] in shared
        ]
        keys += followers
        if self._on_revoke is not None:
            # the runner abandons in-flight work of these partitions under its drain deadline
            self._on_revoke(keys)
        if commit:
            self._commit(only=set(keys))
        self._tenant_hold.forget(keys)
        self._spill.forget(keys)
        for key in keys:
            self._assigned.discard(key)
            self._tracker.forget(key)
            self._gate.forget(key)
            self._held.discard(key)
            self._hold_paused.discard(key)
            # fetched, never handed out, never tracked: the next owner reads them again
            self._fair.forget(key)
            self._full.discard(key)
        if followers and self._overflow is not None:
            self._overflow.incremental_unassign([TopicPartition(*key) for key in followers])
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        log.info("partitions revoked", extra={"partitions": [f"{t}[{p}]" for t, p in keys]})

    # -- Source -------------------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        self._release_due()
        self._collect_spills()
        # acks that came in since the last commit go out even when no more acks follow
        self._commit_due()
        records = self._consume(max_messages, timeout)
        holding: set[tuple[str, int]] = set()
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                mapped = _map_error(error, "consume")
                if isinstance(mapped, FatalError) and mapped.reason != "missing_topic":
                    raise mapped
                log.warning("consume error", extra={"error": error.str()})
                continue
            topic, partition, offset = (
                cast(str, record.topic()),
                cast(int, record.partition()),
                cast(int, record.offset()),
            )
            if (topic, partition) in holding:
                continue  # behind a retry record that is not due: re-read after the seek
            headers, value = tuple(_headers(record)), record.value() or b""
            tenant, rejection = tenant_of_record(topic, headers, value, self._shared)
            if tenant is None:  # a pattern match we do not understand; never ours to process
                continue
            _, ts = record.timestamp()
            message = Message(
                token=(topic, partition, offset),
                tenant=tenant,
                topic=topic,
                value=value,
                key=record.key(),
                headers=headers,
                timestamp=ts / 1000 if ts and ts > 0 else None,
                coordinates={"partition": partition, "offset": offset, "timestamp_ms": ts},
                rejection=rejection,
            )
            if topic == SHARED_ARRIVALS_TOPIC and tenant in self._paused_tenants:
                # tracked now, so no commit passes it while it is held or its spilled copy
                # is not acknowledged
                self._tracker.add((topic, partition), offset)
                hold_or_spill(self._spill, self._tenant_hold, message)
                continue
            if is_retry_topic(topic):
                state = retry_state(message)
                if self._gate.not_due(state.due):
                    self._hold((topic, partition), offset, cast(float, state.due))
                    holding.add((topic, partition))
                    continue
                message = replace(message, delivery_attempt=state.attempt)
            self._fair.add((topic, partition), message)
        released = cast(list[Message], self._tenant_hold.release(self._paused_tenants, max_messages))
        messages = self._fair.take(max_messages - len(released), self._competing())
        for message in messages:
            topic, partition, offset = cast(tuple[str, int, int], message.token)
            self._tracker.add((topic, partition), offset)
        self._balance()
        self._bound_hold()
        return released + messages

    def _send_spill(self, topic: str, message: Message, done: Callable[[BaseException | None], None]) -> None:
        """Copy a shared record to `topic` (payload, key, signed headers); `done` runs in
        `_collect_spills` when the broker acknowledged it (acks=all) or refused it."""
        if self._spill_producer is None:
            self._spill_producer = Producer(
                _client_config(self._settings)
                | {"enable.idempotence": True, "acks": "all", "linger.ms": self._settings.linger_ms}
            )
        _, partition, _ = cast(tuple[str, int, int], message.token)
        if topic not in self._overflow_topics:
            create_topics(self._settings, [topic], partitions=self._shared_partitions())
            self._overflow_topics[topic] = self._shared_partitions()
            self._assign_overflow([k for k in self._assigned if k[0] == SHARED_ARRIVALS_TOPIC], [topic])
        if partition >= self._overflow_topics[topic]:
            raise FatalError("bad_config", f"{topic} has fewer partitions than {SHARED_ARRIVALS_TOPIC}")

        def delivered(error: KafkaError | None, _msg: Any) -> None:
            done(None if error is None else _map_error(error, f"spill to {topic}"))

        try:
            self._spill_producer.produce(
                topic,
                partition=partition,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                on_delivery=delivered,
            )
        except BufferError as exc:
            raise RetryableError("spill_queue_full", f"spill to {topic}: producer queue full") from exc
        except KafkaException as exc:
            raise _map_error(exc.args[0], f"spill to {topic}") from exc

    def _collect_spills(self, timeout: float = 0) -> None:
        """Delivery reports of spilled copies: the acknowledged ones' shared offsets are
        finished, so the next commit may pass them; refused ones are spilled again."""
        if self._spill_producer is None:
            return
        if timeout > 0:
            self._spill_producer.flush(timeout)
        self._spill_producer.poll(0)
        for key, offset in self._spill.acknowledged():
            if key in self._assigned:
                self._tracker.finish(key, offset)
        self._spill.retry()

    def spilled(self) -> dict[str, int]:
        """Shared records copied to each tenant's overflow topic and acknowledged."""
        return dict(self._spill.spilled)

    def _shared_partitions(self) -> int:
        meta = self._consumer.list_topics(SHARED_ARRIVALS_TOPIC, timeout=10).topics.get(SHARED_ARRIVALS_TOPIC)
        return max(1, len(meta.partitions) if meta is not None and meta.partitions else 1)

    def _client_of(self, topic: str) -> Consumer:
        if self._overflow is not None and tenant_of_overflow_topic(topic) is not None:
            return self._overflow
        return self._consumer

    def _pause(self, partitions: list[TopicPartition]) -> None:
        for client, tps in self._by_client(partitions):
            client.pause(tps)

    def _resume(self, partitions: list[TopicPartition]) -> None:
        for client, tps in self._by_client(partitions):
            client.resume(tps)

    def _by_client(self, partitions: list[TopicPartition]) -> list[tuple[Consumer, list[TopicPartition]]]:
        """The partitions of each of the two consumers (the group's, the overflow one)."""
        grouped: dict[int, tuple[Consumer, list[TopicPartition]]] = {}
        for tp in partitions:
            client = self._client_of(tp.topic)
            grouped.setdefault(id(client), (client, []))[1].append(tp)
        return list(grouped.values())

    def _assign_overflow(self, shared: list[tuple[str, int]], topics: list[str] | None = None) -> None:
        """Take partition p of every overflow topic (or of `topics`) for each shared partition p
        now owned, from `<group>.overflow`'s committed offsets; paused with a paused tenant."""
        if self._overflow is None or not shared:
            return
        if topics is None:
            found = self._consumer.list_topics(timeout=10).topics
            for name, meta in found.items():
                if tenant_of_overflow_topic(name) is not None:
                    self._overflow_topics.setdefault(name, len(meta.partitions) or 1)
            topics = list(self._overflow_topics)
        new = [
            (topic, p)
            for topic in topics
            for _, p in shared
            if p < self._overflow_topics.get(topic, 0) and (topic, p) not in self._assigned
        ]
        if not new:
            return
        self._overflow.incremental_assign([TopicPartition(*key) for key in new])
        self._assigned.update(new)
        paused = [TopicPartition(*k) for k in new if tenant_of_kafka_topic(k[0]) in self._paused_tenants]
        if paused:
            self._overflow.pause(paused)
        log.info("overflow partitions assigned", extra={"partitions": [f"{t}[{p}]" for t, p in new]})

    def _hold_is_full(self) -> bool:
        return len(self._tenant_hold) >= self._max_held or self._spill.full()

    def _bound_hold(self) -> None:
        """Past `max_held` held or unacknowledged spilled records the shared partitions are
        paused too (every shared tenant waits then: the last-resort bound on memory, reached
        only when spills are not acknowledged fast enough); resumed below half."""
        if self._hold_is_full():
            new = [k for k in self._assigned if k[0] == SHARED_ARRIVALS_TOPIC and k not in self._hold_paused]
            if new:
                self._hold_paused.update(new)
                self._pause([TopicPartition(*key) for key in new])
        elif self._hold_paused and len(self._tenant_hold) <= self._max_held // 2 and self._spill.drained():
            back = [k for k in self._hold_paused if k in self._assigned and k not in self._full]
            self._hold_paused.clear()
            if back:
                self._resume([TopicPartition(*key) for key in back])

    def _consume(self, max_messages: int, timeout: float) -> list[Any]:
        """Wait up to `timeout` for the first record only, then take what is already buffered.

        librdkafka's batch consume returns only when the batch is full or the whole timeout has
        passed: at low load every idle turn held the records that came in for the full 50 ms,
        so the worker ran in 50 ms ticks and its p99 was worse than a consumer polling one at a
        time (docs/BENCHMARKS.md, issue 16). Records already fetched and not handed out yet do
        not wait at all. Overflow partitions (their own consumer) are read without waiting."""
        spilled: list[Any] = []
        if self._overflow is not None and any(tenant_of_overflow_topic(t) for t, _ in self._assigned):
            spilled = self._overflow.consume(num_messages=max_messages, timeout=0)
            max_messages -= len(spilled)
            if max_messages <= 0:
                return spilled
            if spilled:
                timeout = 0
        return spilled + self._consume_main(max_messages, timeout)

    def _consume_main(self, max_messages: int, timeout: float) -> list[Any]:
        if timeout <= 0 or (len(self._fair) and set(self._fair.sizes()) & set(self._readable())):
            return self._consumer.consume(num_messages=max_messages, timeout=0)
        first = self._consumer.consume(num_messages=1, timeout=timeout)
        if not first or max_messages <= 1:
            return first
        return first + self._consumer.consume(num_messages=max_messages - 1, timeout=0)

    def _readable(self) -> list[tuple[str, int]]:
        return [
            key
            for key in self._assigned
            if key not in self._held
            and key not in self._hold_paused
            and tenant_of_kafka_topic(key[0]) not in self._paused_tenants
        ]

    def _competing(self) -> list[tuple[str, int]]:
        """The readable partitions that share a poll: every arrivals partition, and a retry
        partition only while it holds records. An idle retry tier counted for the share too,
        so a one-partition tenant with three tiers got a quarter of each poll, its queue filled
        up in two polls and was paused, and every pause threw librdkafka's prefetch away and made
        it fetch again: 15-19 pauses per 3,000 arrivals of the null-scorer bench, none after
        (docs/BENCHMARKS.md, issue 16). Retry records wait seconds for their tier anyway."""
        queued = self._fair.sizes()
        return [key for key in self._readable() if not is_retry_topic(key[0]) or queued.get(key)]

    def _balance(self) -> None:
        """Pause the fetch of partitions holding a poll's worth; resume the drained ones."""
        full = [key for key in self._fair.full() if key not in self._full and key in self._assigned]
        if full:
            self._full.update(full)
            self._pause([TopicPartition(*key) for key in full])
        drained = self._fair.drained(self._full)
        if drained:
            self._full.difference_update(drained)
            readable = set(self._readable())
            back = [TopicPartition(*key) for key in drained if key in readable]
            if back:
                self._resume(back)

    def _hold(self, key: tuple[str, int], offset: int, due: float) -> None:
        """Pause a retry partition whose head is not due and rewind to that head."""
        tp = TopicPartition(key[0], key[1], offset)
        self._consumer.pause([tp])
        self._consumer.seek(tp)
        self._held.add(key)
        self._gate.hold(key, due)
        self.retry_holds += 1

    def _release_due(self) -> None:
        ready = [cast(tuple[str, int], k) for k in self._gate.due_partitions()]
        resume = []
        for key in ready:
            self._held.discard(key)
            if (
                key in self._assigned
                and key not in self._full
                and tenant_of_kafka_topic(key[0]) not in self._paused_tenants
            ):
                resume.append(TopicPartition(*key))
        if resume:
            self._consumer.resume(resume)

    def retry_waits(self) -> dict[tuple[str, int], float]:
        """Retry partitions paused until their head is due: partition -> due (epoch seconds)."""
        return cast(dict[tuple[str, int], float], self._gate.waiting())

    def _tenant_partitions(self, tenants: Iterable[str]) -> list[TopicPartition]:
        wanted = set(tenants)
        return [
            TopicPartition(t, p)
            for t, p in self._assigned
            if tenant_of_kafka_topic(t) in wanted and (t, p) not in self._held
        ]

    def pause(self, tenants: Iterable[str]) -> None:
        new = set(tenants) - self._paused_tenants
        if new:
            self._paused_tenants |= new
            partitions = self._tenant_partitions(new)
            if partitions:
                self._pause(partitions)

    def resume(self, tenants: Iterable[str]) -> None:
        back = set(tenants) & self._paused_tenants
        self._spill.stop(back)
        if back:
            self._paused_tenants -= back
            partitions = [
                tp for tp in self._tenant_partitions(back) if (tp.topic, tp.partition) not in self._full
            ]
            if partitions:
                self._resume(partitions)

    def paused(self) -> frozenset[str]:
        return frozenset(self._paused_tenants)

    def ready(self) -> bool:
        return bool(self._assigned)

    def ack(self, tokens: Sequence[AckToken]) -> None:
        """Mark the messages finished; their offsets are committed asynchronously within
        `commit_interval_ms` (never past an unfinished offset: commits.OffsetTracker)."""
        for token in tokens:
            topic, partition, offset = cast(tuple[str, int, int], token)
            self._tracker.finish((topic, partition), offset)
        self._commit_due()

    def _commit_due(self) -> None:
        if self._transactional:
            return  # offsets travel in the producer's transaction
        now = time.monotonic()
        if now - self._last_commit >= self._commit_interval:
            self._last_commit = now
            self._commit(asynchronous=True)

    def _commit(self, only: set[tuple[str, int]] | None = None, *, asynchronous: bool = False) -> None:
        # a synchronous commit (revoke, close) also covers asynchronous ones still in flight
        offsets = self._tracker.committable(unconfirmed=not asynchronous)
        if only is not None:
            offsets = {k: v for k, v in offsets.items() if k in only}
        if not offsets:
            return
        partitions = [TopicPartition(*cast(tuple[str, int], key), offset) for key, offset in offsets.items()]
        try:
            for client, tps in self._by_client(partitions):
                if asynchronous:
                    client.commit(offsets=tps, asynchronous=True)
                else:
                    client.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError._NO_OFFSET:
                return
            # A failed commit only means re-delivery after a crash; the verdicts are idempotent.
            log.warning("commit failed; will retry with the next ack", extra={"error": error.str()})
            return
        if asynchronous:
            self._tracker.mark_sent(offsets)  # confirmed (or offered again) in _committed
        else:
            self._tracker.mark_committed(offsets)

    def _committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's commit result (inside consume): confirm, or offer the points again."""
        ok: dict[tuple[str, int], int] = {}
        failed: dict[tuple[str, int], int] = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            (failed if error is not None or tp.error is not None else ok)[key] = int(tp.offset)
        if ok:
            self._tracker.mark_committed(dict(ok))
        if failed and not (error is not None and error.code() == KafkaError._NO_OFFSET):
            self._tracker.send_failed(dict(failed))
            log.warning(
                "commit failed; will retry",
                extra={"error": error.str() if error is not None else "per-partition error"},
            )

    def outstanding(self) -> int:
        return self._tracker.outstanding()

    # -- exactly-once: the offsets travel in the producer's transaction -----------------
    def finish(self, tokens: Sequence[AckToken]) -> dict[tuple[str, int], int]:
        """Mark messages finished without committing; return the offsets now committable
        (partition -> next offset), for `KafkaSink.commit_transaction`."""
        for token in tokens:
            topic, partition, offset = cast(tuple[str, int, int], token)
            self._tracker.finish((topic, partition), offset)
        return cast(dict[tuple[str, int], int], self._tracker.committable())

    def mark_committed(self, offsets: dict[tuple[str, int], int]) -> None:
        self._tracker.mark_committed(dict(offsets))

    def group_metadata(self) -> Any:
        """The consumer group metadata a transaction's offsets are sent with (opaque)."""
        return self._consumer.consumer_group_metadata()

    def assigned(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._assigned)

    def lag(self) -> dict[tuple[str, int], int]:
        """Consumer lag per assigned partition: high watermark - position (best effort)."""
        result: dict[tuple[str, int], int] = {}
        partitions = [TopicPartition(t, p) for t, p in self._assigned]
        if not partitions:
            return result
        try:
            for client, tps in self._by_client(partitions):
                for tp in client.position(tps):
                    low, high = client.get_watermark_offsets(tp, timeout=1, cached=True)
                    position = tp.offset if tp.offset >= 0 else low
                    result[(tp.topic, tp.partition)] = max(0, high - position)
        except KafkaException:
            pass
        return result

    def close(self, timeout: float) -> None:
        """Commit what finished, leave the group; give up waiting after `timeout` seconds.

        librdkafka's commit and close take no timeout, so they run on a thread this call
        waits for at most `timeout`: past it the process goes on with its shutdown and the
        group coordinator drops the member after session.timeout.ms (nothing finished is
        lost: its commit was already sent, and what was not committed is redelivered)."""

        failure: list[BaseException] = []

        def commit_and_close() -> None:
            try:
                try:
                    # spilled copies still in the producer: acknowledged ones may be committed
                    self._collect_spills(timeout=max(0.0, timeout) / 2)
                    if not self._transactional:
                        self._commit()
                finally:
                    try:
                        # first: its revoke callback commits the overflow partitions that follow
                        self._consumer.close()
                    finally:
                        if self._overflow is not None:
                            self._overflow.close()
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                failure.append(error)

        closer = threading.Thread(target=commit_and_close, name="kafka-close", daemon=True)
        closer.start()
        closer.join(max(0.0, timeout))
        if closer.is_alive():
            log.warning("consumer close did not finish within the deadline", extra={"timeout": timeout})
        elif failure:
            raise failure[0]


class KafkaSink(Sink):
    """Publishes verdicts, dead letters and retries to the tenant's topics."""

    def __init__(self, settings: KafkaSettings, *, transactional_id: str | None = None) -> None:
        config = _client_config(settings) | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.linger_ms,
            "message.timeout.ms": 60_000,
            # bounded local buffer: a full buffer is backpressure, not memory growth
            "queue.buffering.max.messages": 10_000,
            "queue.buffering.max.kbytes": 64 * 1024,
        }
        if transactional_id:
            config["transactional.id"] = transactional_id
        self._settings = settings
        self._producer = Producer(config)
        self._lock = threading.Lock()
        self._transactional = bool(transactional_id)
        # retry topics are created on first use, so a tenant found by the pattern gets them too
        self._ensured: set[str] = set()

    @property
    def producer(self) -> Producer:
        return self._producer

    def publish(self, record: OutRecord) -> Future[None]:
        topic = kafka_topic(record.destination, record.tenant, record.tier)
        if record.destination == "retry" and topic not in self._ensured:
            create_topics(self._settings, [topic])
            self._ensured.add(topic)
        future: Future[None] = Future()

        def delivered(error: KafkaError | None, _msg: Any) -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(_map_error(error, f"publish to {topic}"))

        try:
            self._producer.produce(
                topic, value=record.value, key=record.key, headers=list(record.headers), on_delivery=delivered
            )
        except BufferError as exc:
            self._producer.poll(0)
            raise MessageRejected("producer queue full") from exc
        except KafkaException as exc:
            raise _map_error(exc.args[0], f"publish to {topic}") from exc
        return future

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    # -- transactions (exactly-once mode) -----------------------------------------------
    def _txn(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise FatalError("kafka_txn_fatal", f"{what}: {error.str()}") from exc
            if error.txn_requires_abort():
                raise RetryableError("kafka_txn_abort", f"{what}: {error.str()}") from exc
            raise _map_error(error, what) from exc

    def init_transactions(self, timeout: float = 30.0) -> None:
        """Register the transactional id; fences (aborts) a previous incarnation's open
        transaction, so a restarted worker with the same id never leaves a zombie."""
        self._txn("init transactions", lambda: self._producer.init_transactions(timeout))

    def begin_transaction(self) -> None:
        self._txn("begin transaction", self._producer.begin_transaction)

    def commit_transaction(
        self, offsets: dict[tuple[str, int], int], group_metadata: Any, timeout: float = 30.0
    ) -> None:
        """Add the consumed offsets to the open transaction and commit it: the records
        produced in it and the offsets become visible together, or not at all."""
        if offsets:
            partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            self._txn(
                "send offsets",
                lambda: self._producer.send_offsets_to_transaction(partitions, group_metadata, timeout),
            )
        self._txn("commit transaction", lambda: self._producer.commit_transaction(timeout))

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self._txn("abort transaction", lambda: self._producer.abort_transaction(timeout))


def open_kafka(settings: Settings, **options: Any) -> tuple[KafkaSource, KafkaSink]:
    """The worker's source and sink. Retry tiers are consumed next to the arrivals; in
    exactly-once mode the sink is transactional with the id `<group>.<worker_id>`, which
    must stay the same across restarts of one worker so a restart fences its predecessor."""
    tiers = len(settings.retry.tier_delays_seconds)
    eos = settings.kafka.exactly_once
    shared = shared_topic(settings.shared_tenants, settings.tenant_secrets)
    if tiers and settings.tenants:
        from consumers.retry_topics import RetryPolicy, retry_topics

        policy = RetryPolicy(tuple(settings.retry.tier_delays_seconds))
        create_topics(settings.kafka, retry_topics([*settings.tenants, *settings.shared_tenants], policy))
    source = KafkaSource(
        settings.kafka,
        settings.tenants,
        retry_tiers=tiers,
        transactional=eos,
        shared=shared,
        max_held=settings.max_held_events,
        spill_after=settings.shared_spill_after,
        **options,
    )
    sink = KafkaSink(
        settings.kafka, transactional_id=f"{settings.kafka.group_id}.{settings.worker_id}" if eos else None
    )
    if eos:
        sink.init_transactions()
    return source, sink


def read_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    timeout: float = 10.0,
    idle: float = 2.0,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
    isolation: str = "read_committed",
) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Yield (key, value, headers) of every committed record of `topic` from the beginning
    (`isolation="read_uncommitted"`: also records of open and aborted transactions).

    Stops after `idle` seconds without a record (or `timeout` overall) unless `follow`,
    in which case it runs until `stop()` returns True.
    """
    consumer = Consumer(
        _client_config(settings)
        | {
            "group.id": f"audioguard-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        topic_meta = metadata.topics.get(topic)
        if topic_meta is None or topic_meta.error is not None:
            raise FatalError("missing_topic", f"topic {topic} does not exist")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in topic_meta.partitions])
        started = last = time.monotonic()
        while True:
            record = consumer.poll(0.2)
            now = time.monotonic()
            if record is not None and record.error() is None:
                last = now
                yield (
                    record.key(),
                    record.value() or b"",
                    _headers(record),
                )
                continue
            if follow:
                if stop is not None and stop():
                    return
                continue
            if now - last > idle or now - started > timeout:
                return
    finally:
        consumer.close()


def end_offsets(settings: KafkaSettings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The high watermark (next offset to be written) of every partition of `topics`."""
    consumer = Consumer(_client_config(settings) | {"group.id": f"audioguard-probe-{uuid.uuid4().hex[:8]}"})
    try:
        result: dict[tuple[str, int], int] = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for p in meta.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                result[(topic, p)] = int(high)
        return result
    finally:
        consumer.close()


def fencing_aborts_open_transactions(settings: KafkaSettings, timeout: float = 20.0) -> bool:
    """Probe the broker: when a producer re-registers a transactional id, is the previous
    incarnation's open transaction aborted (Kafka's contract) or does it become visible?

    Exactly-once across crashes relies on that abort. Tansu (memory storage) commits the open
    transaction instead, so a worker SIGKILLed mid-transaction leaks that round's records."""
    topic = f"audioguard.probe.{uuid.uuid4().hex[:12]}"
    create_topics(settings, [topic])
    txn_id = f"audioguard-probe-{uuid.uuid4().hex[:12]}"
    base = _client_config(settings) | {"enable.idempotence": True, "transactional.id": txn_id}
    zombie = Producer(base)
    zombie.init_transactions(timeout)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie")
    zombie.flush(timeout)
    successor = Producer(base)
    successor.init_transactions(timeout)  # fences the zombie
    successor.begin_transaction()
    successor.produce(topic, value=b"successor")
    successor.commit_transaction(timeout)
    values = [value for _key, value, _headers in read_topic(settings, topic, idle=1.0, timeout=timeout)]
    return b"zombie" not in values and b"successor" in values


def committed_offsets(
    settings: KafkaSettings, topics: Sequence[str], group_id: str | None = None
) -> dict[tuple[str, int], int]:
    """The consumer group's committed offset per partition of `topics` (-1001 = none)."""
    consumer = Consumer(_client_config(settings) | {"group.id": group_id or settings.group_id})
    try:
        partitions = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is not None and meta.error is None:
                partitions += [TopicPartition(topic, p) for p in meta.partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=10)}
    finally:
        consumer.close()


class GroupReader:
    """Reads the records of `topic` that a consumer group has not committed yet (or all of
    them, `from_beginning`), up to the end of each partition, and commits only the
    offsets it is handed. For tools (the DLQ tool's own group); it never joins the group,
    so it never takes partitions away from anyone.
    """

    def __init__(
        self, settings: KafkaSettings, topic: str, group_id: str, *, from_beginning: bool = False
    ) -> None:
        self._consumer = Consumer(
            _client_config(settings)
            | {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        self._topic = topic
        self._from_beginning = from_beginning
        self.committed_at_start: dict[int, int] = {}

    def records(self, timeout: float = 60.0) -> Iterator[Message]:
        """Each pending record as a `Message` (token (topic, partition, offset)), partition by
        partition in offset order. Raises FatalError("missing_topic") for an unknown topic."""
        try:
            meta = self._consumer.list_topics(self._topic, timeout=10).topics.get(self._topic)
            if meta is None or meta.error is not None:
                raise FatalError("missing_topic", f"topic {self._topic} does not exist")
            partitions = [TopicPartition(self._topic, p) for p in sorted(meta.partitions)]
            committed = {tp.partition: tp.offset for tp in self._consumer.committed(partitions, timeout=10)}
        except KafkaException as exc:
            raise _map_error(exc.args[0], f"read {self._topic}") from exc
        #: the group's committed offsets when reading started (negative: none)
        self.committed_at_start = dict(committed)
        # the end of each partition is where the fetch reports EOF: some brokers (Tansu) answer
        # ListOffsets with stale high watermarks, so get_watermark_offsets cannot say it
        todo = {tp.partition for tp in partitions}
        assign = []
        for tp in partitions:
            mark = committed.get(tp.partition, -1)
            start = OFFSET_BEGINNING if self._from_beginning or mark < 0 else mark
            assign.append(TopicPartition(self._topic, tp.partition, start))
        self._consumer.assign(assign)
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            record = self._consumer.poll(0.5)
            if record is None:
                continue
            error = record.error()
            partition = cast(int, record.partition())
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    todo.discard(partition)
                    continue
                raise _map_error(error, f"read {self._topic}")
            offset = cast(int, record.offset())
            if partition not in todo:
                continue  # written after this partition's end was reached: the next run's business
            _, ts = record.timestamp()
            tenant = tenant_of_kafka_topic(self._topic) or ""
            yield Message(
                token=(self._topic, partition, offset),
                tenant=tenant,
                topic=self._topic,
                value=record.value() or b"",
                key=record.key(),
                headers=tuple(_headers(record)),
                timestamp=ts / 1000 if ts and ts > 0 else None,
                coordinates={"partition": partition, "offset": offset, "timestamp_ms": ts},
            )
        if todo:
            # a partial read must not pass for an empty queue (stats would say 0)
            raise RetryableError(
                "kafka_unavailable",
                f"read {self._topic}: partitions {sorted(todo)} not read to the end within {timeout:.0f}s",
            )

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit partition -> next offset to read, synchronously; raises on failure."""
        if not offsets:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self._topic, p, o) for p, o in offsets.items()], asynchronous=False
            )
        except KafkaException as exc:
            raise _map_error(exc.args[0], f"commit {self._topic}") from exc

    def close(self) -> None:
        self._consumer.close()
