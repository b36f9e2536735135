"""Fixtures the unit tests of the pipeline on the in-memory transport share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumers.transports.memory import MemoryBroker
from tests.support.memory import registered_broker

#: the one tenant of the in-memory pipeline tests (test modules spell it TENANT as well)
TENANT = "acme"


@pytest.fixture
def broker() -> Iterator[tuple[str, MemoryBroker]]:
    """A registered in-memory broker with TENANT's arrivals, verdicts and dlq topics."""
    with registered_broker(TENANT) as pair:
        yield pair
