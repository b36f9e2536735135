"""Admission: the backpressure gate in front of the pipeline, and the in-flight accounting.

`Admit` is the first step and the only one that refuses work (`MessageRejected`): it
bounds the events and seconds of audio in flight per tenant and in total, which bounds
every queue behind it. The runner holds a refused message, pauses that tenant's
partitions and resumes them below the low-water mark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from consumers.steps import Step, Work, _Forwarding
from consumers.transport import Message, MessageRejected

__all__ = ["Admit", "InFlight"]


class InFlight:
    """Counts events and seconds of audio admitted but not yet acked, per tenant and in total.

    `seconds` starts as the arrival's duration hint (or 0) and is corrected once the audio
    is decoded, so a tenant that under-reports durations is caught one event later.
    """

    def __init__(
        self,
        *,
        max_events: int,
        max_seconds: float,
        tenant_limits: Callable[[str], tuple[int, float]],
        low_water: float = 0.75,
    ) -> None:
        self.max_events = max_events
        self.max_seconds = max_seconds
        self._tenant_limits = tenant_limits
        self.low_water = low_water
        self.events: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def total_events(self) -> int:
        return sum(self.events.values())

    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def check(self, tenant: str) -> str | None:
        """Why `tenant` may not admit one more event now, or None."""
        tenant_events, tenant_seconds = self._tenant_limits(tenant)
        if self.events.get(tenant, 0) >= tenant_events:
            return "tenant_events"
        if self.seconds.get(tenant, 0.0) >= tenant_seconds:
            return "tenant_audio_seconds"
        if self.total_events() >= self.max_events:
            return "total_events"
        if self.total_seconds() >= self.max_seconds:
            return "total_audio_seconds"
        return None

    def below_low_water(self, tenant: str) -> bool:
        tenant_events, tenant_seconds = self._tenant_limits(tenant)
        lw = self.low_water
        return (
            self.events.get(tenant, 0) <= tenant_events * lw
            and self.seconds.get(tenant, 0.0) <= tenant_seconds * lw
            and self.total_events() <= self.max_events * lw
            and self.total_seconds() <= self.max_seconds * lw
        )

    def add(self, tenant: str, seconds: float) -> None:
        with self._lock:
            self.events[tenant] = self.events.get(tenant, 0) + 1
            self.seconds[tenant] = self.seconds.get(tenant, 0.0) + seconds

    def adjust(self, tenant: str, delta_seconds: float) -> None:
        with self._lock:
            self.seconds[tenant] = max(0.0, self.seconds.get(tenant, 0.0) + delta_seconds)

    def release(self, tenant: str, seconds: float) -> None:
        with self._lock:
            self.events[tenant] = max(0, self.events.get(tenant, 0) - 1)
            self.seconds[tenant] = max(0.0, self.seconds.get(tenant, 0.0) - seconds)


class Admit(_Forwarding):
    """The backpressure gate: rejects when the tenant or the worker is at its in-flight bound."""

    def __init__(
        self, next_step: Step, in_flight: InFlight, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(next_step)
        self.in_flight = in_flight
        self._clock = clock

    def submit(self, work: Work) -> None:
        raise TypeError("Admit takes messages: use admit(message)")

    def admit(self, message: Message) -> Work:
        reason = self.in_flight.check(message.tenant)
        if reason is not None:
            raise MessageRejected(reason)
        self.in_flight.add(message.tenant, 0.0)
        work = Work(message=message, admitted_at=self._clock())
        self._forward(work)
        return work
