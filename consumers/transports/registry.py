"""Pick the transport adapter named by `settings.transport`, importing only that SDK."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from consumers.transport import Sink, Source
from services.settings import Settings

__all__ = ["open_publisher", "open_transport", "provision", "read_verdicts"]

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def open_transport(settings: Settings, **options: Any) -> tuple[Source, Sink]:
    """The worker's (Source, Sink) for the configured transport."""
    if settings.transport == "kafka":
        from consumers.transports.kafka import open_kafka

        return open_kafka(settings, **options)
    if settings.transport == "pubsub":
        from consumers.transports.pubsub import open_pubsub

        return open_pubsub(settings, **options)
    from consumers.transports.kinesis import open_kinesis

    return open_kinesis(settings, **options)


def open_publisher(settings: Settings) -> Sink:
    """A Sink only, for the platform side (publishing arrivals) and the DLQ replay tool."""
    if settings.transport == "kafka":
        from consumers.transports.kafka import KafkaSink

        return KafkaSink(settings.kafka)
    if settings.transport == "pubsub":
        from consumers.transports.pubsub import PubSubSink

        return PubSubSink(settings)
    from consumers.transports.kinesis import KinesisSink

    return KinesisSink(settings)


def provision(settings: Settings, tenants: list[str], partitions: int = 1) -> None:
    """Create every topic / subscription / stream the tenants need (idempotent)."""
    if settings.transport == "kafka":
        from consumers.transports.kafka import create_topics, tenant_topics

        create_topics(settings.kafka, tenant_topics(tenants), partitions=partitions)
        return
    if settings.transport == "pubsub":
        from consumers.transports.pubsub import provision_pubsub

        provision_pubsub(settings, tenants)
        return
    from consumers.transports.kinesis import provision_kinesis

    provision_kinesis(settings, tenants)


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
    if settings.transport == "kafka":
        from consumers.tenancy import kafka_topic
        from consumers.transports.kafka import read_topic

        topic = kafka_topic("dlq" if dead_letters else "verdicts", tenant)
        return read_topic(settings.kafka, topic, follow=follow, stop=stop)
    if settings.transport == "pubsub":
        from consumers.transports.pubsub import read_subscription, verdict_subscription

        if dead_letters:
            raise ValueError("on Pub/Sub, read dead letters with `audioguard dlq list`: it does not ack")
        return read_subscription(settings, verdict_subscription(tenant), follow=follow, stop=stop)
    from consumers.tenancy import kinesis_stream
    from consumers.transports.kinesis import read_stream

    stream = kinesis_stream("dlq" if dead_letters else "verdicts", tenant)
    return read_stream(settings, stream, follow=follow, stop=stop)
