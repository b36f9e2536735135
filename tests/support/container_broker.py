"""A real Apache Kafka in a container (testcontainers), for machines with a container engine.

Selected with AUDIOGUARD_TEST_BROKER=testcontainers; it offers the same surface the tests use
from `services.local.broker.EmbeddedBroker` (bootstrap_servers, pause, resume), so the same tests
run on both. No container engine runs on the development machines of this project, so the
default remains the embedded Tansu broker.
"""

from __future__ import annotations

from typing import Any


class ContainerBroker:
    IMAGE = "confluentinc/cp-kafka:7.6.0"

    def __init__(self) -> None:
        from testcontainers.kafka import KafkaContainer

        self._container: Any = KafkaContainer(self.IMAGE).with_kraft()
        self.bootstrap_servers = ""
        self.pid = None

    def __enter__(self) -> ContainerBroker:
        self._container.start()
        self.bootstrap_servers = self._container.get_bootstrap_server()
        return self

    def pause(self) -> None:
        self._container.get_wrapped_container().pause()

    def resume(self) -> None:
        self._container.get_wrapped_container().unpause()

    def __exit__(self, *exc: object) -> None:
        self._container.stop()
