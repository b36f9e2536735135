"""KafkaSource.poll against the real broker: what a poll waits for and what it pauses.

A blocking poll returns once a record is there instead of waiting out its timeout for a full
batch (librdkafka's batch consume does), and a one-partition tenant with idle retry tiers is
never paused by the partition fairness: both threw time or the client's prefetch away on every
cycle (docs/BENCHMARKS.md, issue 16).
"""

from __future__ import annotations

import time

from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, KafkaSource, create_topics
from tests.support.pipeline import make_settings, provision, publish_raw


def _records(tenant: str, count: int) -> list[OutRecord]:
    return [
        OutRecord(tenant=tenant, destination="arrivals", key=f"k{i}".encode(), value=f"v{i}".encode())
        for i in range(count)
    ]


def test_a_blocking_poll_returns_what_is_there_and_idle_retry_tiers_pause_nothing(
    broker, tenants, audio_root
):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    tiers = len(settings.retry.tier_delays_seconds)
    assert tiers >= 1  # the default has retry tiers: their partitions are assigned and idle
    create_topics(settings.kafka, [kafka_topic("retry", tenant, tier) for tier in range(tiers)])
    source = KafkaSource(settings.kafka, [tenant], retry_tiers=tiers)
    sink = KafkaSink(settings.kafka)
    try:
        # three records, far fewer than a poll's worth: the poll must not wait out its 30 s
        publish_raw(sink, _records(tenant, 3))
        got: list[int] = []
        deadline = time.monotonic() + 60  # the group join comes first
        while len(got) < 3 and time.monotonic() < deadline:
            started = time.monotonic()
            batch = source.poll(100, 30.0)
            if batch:
                assert time.monotonic() - started < 30.0, "the poll waited out its timeout"
            got += [m.token[2] for m in batch]
        assert got == [0, 1, 2]
        assert len(source._assigned) == 1 + tiers

        # a backlog of several polls on the one arrivals partition: handed out in order, and the
        # fairness never pauses it (the idle retry partitions do not count for the share)
        publish_raw(sink, _records(tenant, 600))
        offsets: list[int] = []
        paused_for_fairness = 0
        deadline = time.monotonic() + 60
        while len(offsets) < 600 and time.monotonic() < deadline:
            offsets += [m.token[2] for m in source.poll(100, 1.0)]
            paused_for_fairness += len(source._full)
        assert offsets == list(range(3, 603))
        assert paused_for_fairness == 0
    finally:
        sink.close(10)
        source.close(10)
