"""One time budget, handed down through a shutdown or a partition revoke.

Draining, flushing the producer, stopping the scorer and closing the consumer each spend
from the same `Deadline` instead of each having a timeout of its own, so the total stays
under what the worker was given (the orchestrator's grace period on SIGTERM, or
max.poll.interval.ms on a Kafka revoke). quix-streams hands one deadline down the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Deadline"]


@dataclass(frozen=True)
class Deadline:
    """An absolute point on `clock`; `remaining()` never goes below zero."""

    at: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + max(0.0, seconds), clock)

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def reserve(self, seconds: float) -> Deadline:
        """A deadline `seconds` earlier (not before now): the part of the budget that may be
        spent before what must still happen after it (a flush, a close)."""
        return Deadline(max(self.clock(), self.at - seconds), self.clock)
