"""Kinesis adapter when moto goes away: polling backs off without raising, PutRecords fails
its futures as RetryableError after the bounded attempts, nothing hangs."""

from __future__ import annotations

import time
import uuid

import pytest

from consumers.transport import OutRecord
from consumers.transports.kinesis import KinesisSink, KinesisSource, provision_kinesis
from services.errors import RetryableError
from services.local.emulators import MotoServer
from services.settings import Settings
from services.store import MemoryStore


def test_a_moto_outage_is_retryable_and_bounded() -> None:
    tenant = f"out-{uuid.uuid4().hex[:8]}"
    moto = MotoServer().start()
    try:
        settings = Settings(
            transport="kinesis",
            tenants=[tenant],
            kinesis={"endpoint_url": moto.endpoint_url, "poll_interval_seconds": 0.05},
            retry={"attempts": 3, "initial_backoff_seconds": 0.1, "max_backoff_seconds": 0.4},
        )
        provision_kinesis(settings, [tenant])
        sink = KinesisSink(settings)
        source = KinesisSource(settings, [tenant], MemoryStore())
        sink.publish(OutRecord(tenant, "arrivals", b"k", b"before")).result(timeout=10)
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = source.poll(10, 0.2)
        assert [m.value for m in got] == [b"before"]
        source.ack([got[0].token])

        moto.stop()
        started = time.monotonic()
        assert source.poll(10, 1.0) == []  # backs off, does not raise
        future = sink.publish(OutRecord(tenant, "verdicts", b"k", b"during"))
        with pytest.raises(RetryableError) as caught:
            future.result(timeout=60)
        assert caught.value.reason == "unavailable"
        elapsed = time.monotonic() - started
        print(f"\noutage: poll returned empty, publish failed after {elapsed:.1f}s")
        source.close(5)
        sink.close(5)
    finally:
        moto.stop()
