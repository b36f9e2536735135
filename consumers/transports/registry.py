"""The one table of transports: name -> how to open its Source/Sink, provision it and read it back.

Every place that offers a choice of transport (settings, the CLI, the demo, the DLQ tool,
the conformance suite) reads the names from `TRANSPORTS` here. Each factory imports its
adapter when it is called, so opening one transport imports only that transport's SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from consumers.transport import Sink, Source
from services.settings import Settings

__all__ = [
    "TRANSPORTS",
    "Record",
    "Transport",
    "open_publisher",
    "open_transport",
    "provision",
    "read_verdicts",
    "transport",
    "transport_names",
]

#: (key, value, headers) of one record read back from a destination
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Transport:
    """What the rest of the project may ask of one transport."""

    name: str
    #: the worker's (Source, Sink); keyword options go to the adapter (e.g. Kafka's on_revoke)
    open: Callable[..., tuple[Source, Sink]]
    #: a Sink only: the platform side and the DLQ replay tool
    publisher: Callable[[Settings], Sink]
    #: create every destination the tenants need (idempotent): (settings, tenants, partitions)
    provision: Callable[[Settings, list[str], int], None]
    #: (key, value, headers) of a tenant's verdicts, or its dead letters when `dead_letters`
    read: Callable[[Settings, str, bool, bool, Callable[[], bool] | None], Iterator[Record]]
    #: the largest record (value, key and headers) its destinations take: a dead letter is
    #: fitted under it (dlq.envelope), so that a payload the source delivered can always be
    #: dead-lettered
    max_record_bytes: Callable[[Settings], int]
    #: a dead-letter destination the DLQ tool can read and replay (dlq.queues)
    dead_letters: bool = True
    #: the broker lives inside this process: no other process (a worker, a tool) can reach it
    in_process: bool = False
    #: consumer-group rebalances move partitions away: `open` takes an `on_revoke` callback
    rebalances: bool = False


#: what librdkafka's producer refuses above by default (message.max.bytes)
KAFKA_PRODUCER_DEFAULT_MAX_BYTES = 1_000_000
#: Pub/Sub: 10 MB per message, data and attributes together
PUBSUB_MAX_MESSAGE_BYTES = 10_000_000
#: Kinesis: 1 MiB per record, data and partition key together
KINESIS_MAX_RECORD_BYTES = 1024 * 1024


# -- kafka --------------------------------------------------------------------------------
def _kafka_open(settings: Settings, **options: Any) -> tuple[Source, Sink]:
    from consumers.transports.kafka import open_kafka

    return open_kafka(settings, **options)


def _kafka_publisher(settings: Settings) -> Sink:
    from consumers.transports.kafka import KafkaSink

    return KafkaSink(settings.kafka)


def _kafka_provision(settings: Settings, tenants: list[str], partitions: int) -> None:
    from consumers.transports.kafka import create_topics, tenant_topics

    create_topics(settings.kafka, tenant_topics(tenants), partitions=partitions)


def _kafka_read(
    settings: Settings, tenant: str, dead_letters: bool, follow: bool, stop: Callable[[], bool] | None
) -> Iterator[Record]:
    from consumers.tenancy import kafka_topic
    from consumers.transports.kafka import read_topic

    topic = kafka_topic("dlq" if dead_letters else "verdicts", tenant)
    return read_topic(settings.kafka, topic, follow=follow, stop=stop)


def _kafka_max_record_bytes(settings: Settings) -> int:
    # both bite: the producer refuses locally above message.max.bytes, the broker above the
    # topic's max.message.bytes
    raw = settings.kafka.extra.get("message.max.bytes", KAFKA_PRODUCER_DEFAULT_MAX_BYTES)
    try:
        producer = int(raw)
    except ValueError:
        producer = KAFKA_PRODUCER_DEFAULT_MAX_BYTES
    return min(producer, settings.kafka.topic_max_message_bytes)


# -- pubsub -------------------------------------------------------------------------------
def _pubsub_open(settings: Settings, **options: Any) -> tuple[Source, Sink]:
    from consumers.transports.pubsub import open_pubsub

    return open_pubsub(settings, **options)


def _pubsub_publisher(settings: Settings) -> Sink:
    from consumers.transports.pubsub import PubSubSink

    return PubSubSink(settings)


def _pubsub_provision(settings: Settings, tenants: list[str], _partitions: int) -> None:
    from consumers.transports.pubsub import provision_pubsub

    provision_pubsub(settings, tenants)


def _pubsub_read(
    settings: Settings, tenant: str, dead_letters: bool, follow: bool, stop: Callable[[], bool] | None
) -> Iterator[Record]:
    from consumers.transports.pubsub import read_subscription, verdict_subscription

    if dead_letters:
        raise ValueError("on Pub/Sub, read dead letters with `audioguard dlq list`: it does not ack")
    return read_subscription(settings, verdict_subscription(tenant), follow=follow, stop=stop)


# -- kinesis ------------------------------------------------------------------------------
def _kinesis_open(settings: Settings, **options: Any) -> tuple[Source, Sink]:
    from consumers.transports.kinesis import open_kinesis

    if not settings.kinesis.leases:
        return open_kinesis(settings, **options)
    from consumers.transports.kinesis_leases import open_coordinator
    from services.store import open_store

    # the store's checkpoints (written before leases were on) seed the new lease items
    seed = options.pop("checkpoints", None) or open_store(settings.store.url, settings.store.ttl_seconds)
    coordinator = open_coordinator(settings, application="audioguard-workers", seed=seed)
    source, sink = open_kinesis(settings, checkpoints=coordinator, leases=coordinator, **options)
    coordinator.start()
    return source, sink


def _kinesis_publisher(settings: Settings) -> Sink:
    from consumers.transports.kinesis import KinesisSink

    return KinesisSink(settings)


def _kinesis_provision(settings: Settings, tenants: list[str], _partitions: int) -> None:
    from consumers.transports.kinesis import provision_kinesis

    provision_kinesis(settings, tenants)
    if settings.kinesis.leases:
        from consumers.transports.kinesis_leases import open_lease_table

        open_lease_table(settings).ensure()


def _kinesis_read(
    settings: Settings, tenant: str, dead_letters: bool, follow: bool, stop: Callable[[], bool] | None
) -> Iterator[Record]:
    from consumers.tenancy import kinesis_stream
    from consumers.transports.kinesis import read_stream

    stream = kinesis_stream("dlq" if dead_letters else "verdicts", tenant)
    return read_stream(settings, stream, follow=follow, stop=stop)


# -- memory -------------------------------------------------------------------------------
def _memory_open(settings: Settings, **options: Any) -> tuple[Source, Sink]:
    from consumers.transports.memory import open_memory

    return open_memory(settings, **options)


def _memory_publisher(settings: Settings) -> Sink:
    from consumers.transports.memory import MemorySink, memory_broker

    return MemorySink(memory_broker(settings.memory.broker))


def _memory_provision(settings: Settings, tenants: list[str], partitions: int) -> None:
    from consumers.transports.memory import provision_memory

    provision_memory(settings, tenants, partitions=partitions)


def _memory_read(
    settings: Settings, tenant: str, dead_letters: bool, follow: bool, stop: Callable[[], bool] | None
) -> Iterator[Record]:
    from consumers.tenancy import kafka_topic
    from consumers.transports.memory import memory_broker, read_memory_topic

    topic = kafka_topic("dlq" if dead_letters else "verdicts", tenant)
    return read_memory_topic(memory_broker(settings.memory.broker), topic, follow=follow, stop=stop)


TRANSPORTS: dict[str, Transport] = {
    t.name: t
    for t in (
        Transport(
            "kafka",
            _kafka_open,
            _kafka_publisher,
            _kafka_provision,
            _kafka_read,
            max_record_bytes=_kafka_max_record_bytes,
            rebalances=True,
        ),
        Transport(
            "pubsub",
            _pubsub_open,
            _pubsub_publisher,
            _pubsub_provision,
            _pubsub_read,
            max_record_bytes=lambda _settings: PUBSUB_MAX_MESSAGE_BYTES,
        ),
        Transport(
            "kinesis",
            _kinesis_open,
            _kinesis_publisher,
            _kinesis_provision,
            _kinesis_read,
            max_record_bytes=lambda _settings: KINESIS_MAX_RECORD_BYTES,
        ),
        Transport(
            "memory",
            _memory_open,
            _memory_publisher,
            _memory_provision,
            _memory_read,
            in_process=True,
            rebalances=True,
            max_record_bytes=lambda settings: settings.memory.max_record_bytes,
        ),
    )
}


def transport_names(*, shared: bool = False) -> tuple[str, ...]:
    """Every transport's name; with `shared`, only those another process can reach (what a
    separate worker process, or a tool talking to running workers, can use)."""
    return tuple(name for name, t in TRANSPORTS.items() if not (shared and t.in_process))


def transport(name: str) -> Transport:
    """The registry entry for `name`; ValueError for an unknown one."""
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"unknown transport {name!r}; expected one of {sorted(TRANSPORTS)}") from None


def open_transport(settings: Settings, **options: Any) -> tuple[Source, Sink]:
    """The worker's (Source, Sink) for the configured transport."""
    return transport(settings.transport).open(settings, **options)


def open_publisher(settings: Settings) -> Sink:
    """A Sink only, for the platform side (publishing arrivals) and the DLQ replay tool."""
    return transport(settings.transport).publisher(settings)


def provision(settings: Settings, tenants: list[str], partitions: int = 1) -> None:
    """Create every topic / subscription / stream the tenants need (idempotent)."""
    transport(settings.transport).provision(settings, tenants, partitions)


def read_verdicts(
    settings: Settings,
    tenant: str,
    *,
    dead_letters: bool = False,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Iterator[Record]:
    """(key, value, headers) of a tenant's verdicts (or dead letters) from the beginning.

    Pub/Sub reads the `verdicts-<tenant>-readers` subscription, which acks what it reads;
    its dead letters are read non-destructively with `audioguard dlq list` instead.
    """
    return transport(settings.transport).read(settings, tenant, dead_letters, follow, stop)
