"""The transport registry is the one list of transports: everything that names them agrees with it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import get_args

import pytest

from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.memory import MemoryBroker, forget_broker, memory_broker, register_broker
from consumers.transports.registry import (
    TRANSPORTS,
    open_publisher,
    open_transport,
    provision,
    read_verdicts,
    transport_names,
)
from dlq.queues import DEAD_LETTER_QUEUES, MemoryDeadLetters, open_dead_letters
from schemas import SourceCoordinates
from services.platform import arrival_for
from services.settings import Settings
from tests.support.memory import ConstantDetector, Uploads, build_memory_worker, drive, memory_settings

NAMES = set(TRANSPORTS)


def test_settings_accept_exactly_the_registry_names() -> None:
    assert set(get_args(Settings.model_fields["transport"].annotation)) == NAMES
    with pytest.raises(ValueError):
        Settings(transport="carrier-pigeon")


def test_dead_letter_coordinates_name_exactly_the_registry_names() -> None:
    assert set(get_args(SourceCoordinates.model_fields["transport"].annotation)) == NAMES


def test_the_dlq_tool_has_a_queue_for_every_transport_with_dead_letters() -> None:
    with_dead_letters = {name for name, entry in TRANSPORTS.items() if entry.dead_letters}
    assert with_dead_letters <= set(DEAD_LETTER_QUEUES)
    assert set(DEAD_LETTER_QUEUES) <= NAMES, "a DLQ queue for a transport the registry does not know"
    for name, queue in DEAD_LETTER_QUEUES.items():
        assert queue.transport == name


def test_the_demo_knows_every_transport() -> None:
    from services.tools.demo import DEMO_TRANSPORTS

    assert set(DEMO_TRANSPORTS) == NAMES


def test_cli_offers_separate_processes_only_the_transports_they_can_reach() -> None:
    from services.cli import build_parser

    parser = build_parser()
    shared = transport_names(shared=True)
    assert "memory" not in shared and set(shared) == {n for n in NAMES if not TRANSPORTS[n].in_process}
    for name in shared:
        assert parser.parse_args(["worker", "--transport", name]).transport == name
        assert parser.parse_args(["dlq", "stats", "--tenant", "acme", "--transport", name]).transport == name
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--transport", "memory"])
    # the demo runs its worker in its own process, so the in-process broker is offered there
    assert parser.parse_args(["demo", "--transport", "memory"]).transport == "memory"


def test_an_unknown_transport_is_refused_by_name() -> None:
    settings = Settings().model_copy(update={"transport": "carrier-pigeon"})
    with pytest.raises(ValueError, match="carrier-pigeon"):
        open_transport(settings)


def test_opening_one_transport_imports_only_its_own_sdk() -> None:
    probe = (
        "import sys\n"
        "from consumers.transports.registry import open_transport, provision\n"
        "from services.settings import Settings\n"
        "settings = Settings(transport='memory', tenants=['acme'])\n"
        "provision(settings, ['acme'])\n"
        "source, sink = open_transport(settings)\n"
        "source.close(1)\n"
        "sdks = ['confluent_kafka', 'google.cloud.pubsub_v1', 'boto3', 'torch']\n"
        "print([name for name in sdks if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_thin_lookups_work_end_to_end_on_memory(tmp_path: Path) -> None:
    name = f"unit-{uuid.uuid4().hex[:8]}"
    try:
        settings = memory_settings(name, ["acme"], tmp_path)
        # provisioning creates the broker named by the settings, with the tenant's topics
        provision(settings, ["acme"], partitions=3)
        broker = memory_broker(name)
        assert broker.partitions(kafka_topic("arrivals", "acme")) == 3
        worker = build_memory_worker(settings, broker, ConstantDetector())
        uploads = Uploads(broker, tmp_path)
        uri, data = uploads.clip("acme", "clip.wav")
        key = "acme:clip"
        publisher = open_publisher(settings)
        future = publisher.publish(
            OutRecord(
                "acme", "arrivals", key.encode(), arrival_for("acme", uri, data, key=key, content_id="clip")
            )
        )
        publisher.flush(1)
        future.result(1)
        try:
            drive(worker, lambda: worker.pipeline.stats.acked == 1)
        finally:
            worker.shutdown()
        verdicts = [json.loads(value) for _k, value, _h in read_verdicts(settings, "acme")]
        assert [v["idempotency_key"] for v in verdicts] == [key]
        assert list(read_verdicts(settings, "acme", dead_letters=True)) == []
    finally:
        forget_broker(name)


def test_dead_letters_on_memory_are_listed_replayed_and_removed(tmp_path: Path) -> None:
    from dlq.replay import ReplayOptions, replay_dead_letters

    name = f"unit-{uuid.uuid4().hex[:8]}"
    broker = register_broker(name, MemoryBroker())
    try:
        settings = memory_settings(name, ["acme"], tmp_path)
        provision(settings, ["acme"])
        worker = build_memory_worker(settings, broker, ConstantDetector())
        uploads = Uploads(broker, tmp_path)
        key = uploads.arrival("acme", "clip")
        clip = tmp_path / "acme" / "clip.wav"
        data = clip.read_bytes()
        clip.unlink()  # the upload is not there yet: a dead letter (missing_object)
        drive(worker, lambda: worker.pipeline.stats.acked == 1)
        assert worker.pipeline.stats.dead_letters == 1

        queue = open_dead_letters(settings, "acme")
        assert isinstance(queue, MemoryDeadLetters)
        listed = list(queue.read())
        assert [r.envelope.reason for r in listed] == ["missing_object"]
        clip.write_bytes(data)  # the platform fixed it: replay
        summary = replay_dead_letters(queue, listed, ReplayOptions(operator="unit"))
        queue.close()
        assert (summary.replayed, summary.removed) == (1, 1)

        drive(worker, lambda: worker.pipeline.stats.acked == 2)
        worker.shutdown()
        assert worker.pipeline.stats.verdicts == 1
        verdicts = [json.loads(value) for _k, value, _h in read_verdicts(settings, "acme")]
        assert [v["idempotency_key"] for v in verdicts] == [key]
        again = open_dead_letters(settings, "acme")
        assert list(again.read()) == [], "a replayed dead letter must leave the queue"
        again.close()
    finally:
        forget_broker(name)


def test_only_the_transports_that_rebalance_take_a_revoke_callback() -> None:
    # build_worker passes on_revoke exactly where the registry says partitions can move away
    import inspect

    from consumers.transports.kafka import KafkaSource
    from consumers.transports.kinesis import KinesisSource
    from consumers.transports.memory import MemorySource
    from consumers.transports.pubsub import PubSubSource

    sources = {"kafka": KafkaSource, "pubsub": PubSubSource, "kinesis": KinesisSource, "memory": MemorySource}
    assert set(sources) == set(TRANSPORTS)
    for name, source in sources.items():
        takes = "on_revoke" in inspect.signature(source.__init__).parameters
        assert takes == TRANSPORTS[name].rebalances, name


def test_each_transport_says_the_record_limit_a_dead_letter_is_fitted_under() -> None:
    settings = Settings()
    limits = {name: t.max_record_bytes(settings) for name, t in TRANSPORTS.items()}
    # Kafka: librdkafka's producer default, below the broker's 1,048,588
    assert limits == {"kafka": 1_000_000, "pubsub": 10_000_000, "kinesis": 1_048_576, "memory": 1_000_000}
    raised = Settings(kafka={"extra": {"message.max.bytes": "5000000"}})
    assert TRANSPORTS["kafka"].max_record_bytes(raised) == 1_048_588  # the topic's limit bites then
    both = Settings(kafka={"extra": {"message.max.bytes": "5000000"}, "topic_max_message_bytes": 8_000_000})
    assert TRANSPORTS["kafka"].max_record_bytes(both) == 5_000_000
