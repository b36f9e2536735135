"""The in-memory transport on its own: Kafka's conventions, contiguous commits, groups, futures."""

from __future__ import annotations

import pytest

from consumers.tenancy import kafka_topic
from consumers.transport import MessageRejected, OutRecord
from consumers.transports.memory import (
    MemoryBroker,
    MemoryGroupReader,
    MemorySink,
    MemorySource,
    read_memory_topic,
)
from services.errors import FatalError, RetryableError

ARRIVALS = kafka_topic("arrivals", "acme")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker() -> MemoryBroker:
    broker = MemoryBroker(clock=Clock())
    for tenant in ("acme", "globex"):
        for kind in ("arrivals", "verdicts", "dlq"):
            broker.create_topic(kafka_topic(kind, tenant), partitions=2)
    return broker


def fill(broker: MemoryBroker, topic: str, partition: int, count: int) -> None:
    for i in range(count):
        broker.produce(topic, f"{partition}-{i}".encode(), key=b"k", partition=partition)


def test_keyed_records_keep_one_partition_and_offsets_count_up(broker: MemoryBroker) -> None:
    placed = [broker.produce(ARRIVALS, b"v", key=b"same-key") for _ in range(5)]
    assert len({partition for partition, _ in placed}) == 1
    assert [offset for _, offset in placed] == [0, 1, 2, 3, 4]
    assert broker.end_offset(ARRIVALS, placed[0][0]) == 5


def test_messages_carry_kafka_tokens_coordinates_and_the_clock(broker: MemoryBroker) -> None:
    broker.produce(ARRIVALS, b"hello", key=b"k1", headers=[("h", b"1")], partition=1)
    source = MemorySource(broker, ["acme"], group="g")
    (message,) = source.poll(10, 0)
    assert message.token == (ARRIVALS, 1, 0)
    assert (message.tenant, message.topic, message.value, message.key) == ("acme", ARRIVALS, b"hello", b"k1")
    assert message.headers == (("h", b"1"),)
    assert message.coordinates["partition"] == 1 and message.coordinates["offset"] == 0
    assert message.timestamp == 1_700_000_000.0 and message.received_at == 1_700_000_000.0


def test_poll_is_bounded_and_shares_the_batch_between_partitions(broker: MemoryBroker) -> None:
    fill(broker, ARRIVALS, 0, 10)
    fill(broker, ARRIVALS, 1, 10)
    source = MemorySource(broker, ["acme"], group="g")
    batch = source.poll(6, 0)
    assert len(batch) == 6
    per_partition = [sum(1 for m in batch if m.token[1] == p) for p in (0, 1)]  # type: ignore[index]
    assert per_partition == [3, 3]


def test_a_paused_tenant_gets_nothing_until_resumed(broker: MemoryBroker) -> None:
    fill(broker, ARRIVALS, 0, 2)
    fill(broker, kafka_topic("arrivals", "globex"), 0, 2)
    source = MemorySource(broker, ["acme", "globex"], group="g")
    source.pause(["acme"])
    assert source.paused() == {"acme"}
    assert {m.tenant for m in source.poll(10, 0)} == {"globex"}
    source.resume(["acme"])
    assert [m.tenant for m in source.poll(10, 0)] == ["acme", "acme"]


def test_commit_advances_only_past_a_contiguous_run_of_acked_offsets(broker: MemoryBroker) -> None:
    fill(broker, ARRIVALS, 0, 3)
    source = MemorySource(broker, ["acme"], group="g")
    tokens = [m.token for m in source.poll(10, 0)]
    source.ack([tokens[2], tokens[1]])
    assert broker.committed("g") == {}, "offset 0 is unfinished: nothing may be committed"
    source.ack([tokens[0]])
    assert broker.committed("g") == {(ARRIVALS, 0): 3}


def test_what_was_not_committed_goes_to_the_next_source_of_the_group(broker: MemoryBroker) -> None:
    fill(broker, ARRIVALS, 0, 4)
    first = MemorySource(broker, ["acme"], group="g")
    tokens = [m.token for m in first.poll(10, 0)]
    first.ack([tokens[0], tokens[2]])  # 1 unfinished: only offset 0 is committed
    first.close(1)
    second = MemorySource(broker, ["acme"], group="g")
    assert [m.token[2] for m in second.poll(10, 0)] == [1, 2, 3]  # type: ignore[index]
    other_group = MemorySource(broker, ["acme"], group="other")
    assert len(other_group.poll(10, 0)) == 4


def test_a_crashed_source_commits_nothing(broker: MemoryBroker) -> None:
    fill(broker, ARRIVALS, 0, 2)
    first = MemorySource(broker, ["acme"], group="g")
    first.poll(10, 0)
    first.crash()
    second = MemorySource(broker, ["acme"], group="g")
    assert len(second.poll(10, 0)) == 2


def test_a_joining_member_takes_partitions_only_after_the_owner_revoked_them(broker: MemoryBroker) -> None:
    fill(broker, ARRIVALS, 0, 2)
    fill(broker, ARRIVALS, 1, 2)
    revoked: list[list[tuple[str, int]]] = []
    first = MemorySource(broker, ["acme"], group="g", member="a", on_revoke=revoked.append)
    batch = first.poll(10, 0)
    assert first.assigned() == {(ARRIVALS, 0), (ARRIVALS, 1)}
    first.ack([m.token for m in batch if m.token == (ARRIVALS, 1, 0)])

    second = MemorySource(broker, ["acme"], group="g", member="b")
    assert second.poll(10, 0) == [], "partition 1 is still held by its first owner"
    first.poll(10, 0)  # the owner lets go inside its own poll, as on Kafka
    assert revoked == [[(ARRIVALS, 1)]]
    assert first.assigned() == {(ARRIVALS, 0)}
    assert broker.committed("g") == {(ARRIVALS, 1): 1}
    assert [m.token for m in second.poll(10, 0)] == [(ARRIVALS, 1, 1)]


def test_a_pattern_source_picks_up_a_new_tenant_topic(broker: MemoryBroker) -> None:
    source = MemorySource(broker, [], group="g")
    topic = kafka_topic("arrivals", "newco")
    broker.create_topic(topic)
    broker.produce(topic, b"x")
    assert [m.tenant for m in source.poll(10, 0)] == ["newco"]


def test_sink_futures_resolve_on_poll_and_injected_failures_fail_only_their_record(
    broker: MemoryBroker,
) -> None:
    sink = MemorySink(broker)
    sink.fail_next(where=lambda record: record.key == b"b")
    futures = [sink.publish(OutRecord("acme", "verdicts", key, b"v-" + key)) for key in (b"a", b"b", b"c")]
    assert not any(f.done() for f in futures), "nothing is confirmed before the sink is polled"
    assert sink.flush(1) == 0
    assert futures[0].result() is None and futures[2].result() is None
    assert isinstance(futures[1].exception(), RetryableError)
    values = [value for _k, value, _h in read_memory_topic(broker, kafka_topic("verdicts", "acme"))]
    assert sorted(values) == [b"v-a", b"v-c"], "a failed delivery must not be appended"


def test_sink_fails_a_record_for_a_missing_topic_and_rejects_when_full(broker: MemoryBroker) -> None:
    sink = MemorySink(broker, max_outstanding=1)
    future = sink.publish(OutRecord("nobody", "verdicts", b"k", b"v"))
    with pytest.raises(MessageRejected):
        sink.publish(OutRecord("acme", "verdicts", b"k", b"v"))
    sink.poll()
    error = future.exception()
    assert isinstance(error, FatalError) and error.reason == "missing_topic"


def test_group_reader_reads_from_the_committed_position_and_commits_what_it_is_told(
    broker: MemoryBroker,
) -> None:
    dlq = kafka_topic("dlq", "acme")
    fill(broker, dlq, 0, 3)
    reader = MemoryGroupReader(broker, dlq, "tool")
    assert [m.token[2] for m in reader.records()] == [0, 1, 2]  # type: ignore[index]
    reader.commit({0: 2})
    again = MemoryGroupReader(broker, dlq, "tool")
    assert [m.token[2] for m in again.records()] == [2]  # type: ignore[index]
    assert again.committed_at_start == {0: 2, 1: -1}
    assert len(list(MemoryGroupReader(broker, dlq, "tool", from_beginning=True).records())) == 3
