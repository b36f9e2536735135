"""Fixtures the unit tests of the pipeline on the in-memory transport share."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from consumers.tenancy import kafka_topic
from consumers.transports.memory import MemoryBroker, forget_broker, register_broker

#: the one tenant of the in-memory pipeline tests (test modules spell it TENANT as well)
TENANT = "acme"


@pytest.fixture
def broker() -> Iterator[tuple[str, MemoryBroker]]:
    """A registered in-memory broker with TENANT's arrivals, verdicts and dlq topics."""
    name = f"unit-{uuid.uuid4().hex[:8]}"
    broker = register_broker(name, MemoryBroker())
    for kind in ("arrivals", "verdicts", "dlq"):
        broker.create_topic(kafka_topic(kind, TENANT))
    yield name, broker
    forget_broker(name)
