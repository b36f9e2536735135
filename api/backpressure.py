"""Backpressure from the pipeline: how far the workers' consumer group is behind on a tenant.

Kafka only (the committed offsets of `kafka.group_id` against the high watermarks of
``audioguard.arrivals.<tenant>``); other transports report no lag and are never refused here.
A measurement is reused for `api.lag_refresh_seconds`, and one request at a time per tenant
measures, so a burst of requests costs one round of broker calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from services.settings import Settings

__all__ = ["LagGauge"]


class LagGauge:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._tenant_locks: dict[str, threading.Lock] = {}
        self._measured: dict[str, tuple[int, float]] = {}

    def lag(self, tenant: str) -> int | None:
        """Arrivals published to `tenant` and not yet committed by the workers; None: unknown."""
        if self.settings.transport != "kafka":
            return None
        with self._lock:
            lock = self._tenant_locks.setdefault(tenant, threading.Lock())
        with lock:
            cached = self._measured.get(tenant)
            now = self._clock()
            if cached is not None and now - cached[1] < self.settings.api.lag_refresh_seconds:
                return cached[0]
            value = self._measure(tenant)
            self._measured[tenant] = (value, self._clock())
            return value

    def _measure(self, tenant: str) -> int:
        from consumers.tenancy import kafka_topic
        from consumers.transports.kafka import committed_offsets, end_offsets

        topic = kafka_topic("arrivals", tenant)
        ends = end_offsets(self.settings.kafka, [topic])
        committed = committed_offsets(self.settings.kafka, [topic])
        # -1001: the group never committed on that partition; everything in it is behind
        return sum(max(0, end - max(0, committed.get(part, 0))) for part, end in ends.items())
