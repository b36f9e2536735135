"""Pub/Sub adapter when the server goes away: every call fails as RetryableError within the
retry budget (never hangs for the client's default minute), and polling does not raise."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from consumers.transport import OutRecord
from consumers.transports.pubsub import PubSubSink, PubSubSource, provision_pubsub
from services.errors import RetryableError
from services.local.emulators import PubSubEmulator
from services.settings import Settings

pytestmark = pytest.mark.skipif(
    shutil.which("gcloud") is None, reason="needs the gcloud SDK's Pub/Sub emulator"
)


def test_an_emulator_outage_is_retryable_and_bounded() -> None:
    tenant = f"out-{uuid.uuid4().hex[:8]}"
    emulator = PubSubEmulator().start()
    try:
        settings = Settings(
            transport="pubsub",
            tenants=[tenant],
            pubsub={"emulator_host": emulator.host_port},
            retry={"initial_backoff_seconds": 0.1, "max_backoff_seconds": 0.5, "max_total_seconds": 3.0},
        )
        provision_pubsub(settings, [tenant])
        sink = PubSubSink(settings)
        source = PubSubSource(settings, [tenant])
        sink.publish(OutRecord(tenant, "arrivals", b"k", b"before")).result(timeout=10)
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = source.poll(10, 0.2)
        assert [m.value for m in got] == [b"before"]

        emulator.stop()
        started = time.monotonic()
        future = sink.publish(OutRecord(tenant, "verdicts", b"k", b"during", ordering_key="c1"))
        with pytest.raises(RetryableError):
            future.result(timeout=30)
        publish_seconds = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(RetryableError):
            source.ack([got[0].token])
        ack_seconds = time.monotonic() - started
        assert source.poll(10, 0.5) == []  # an outage is not fatal to the source
        print(f"\noutage noticed: publish after {publish_seconds:.1f}s, ack after {ack_seconds:.1f}s")
        assert publish_seconds < 15 and ack_seconds < 15
        source.close(5)
        sink.close(5)
    finally:
        emulator.stop()
