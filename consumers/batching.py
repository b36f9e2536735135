"""The micro-batcher: fair across tenants, bounded by windows, audio seconds and a deadline.

Items (one upload's windows each) wait in per-tenant queues. A batch is *ready* when the
queued work reaches `max_windows` or `max_audio_seconds`, or when the deadline that
started with the oldest queued item has passed (Triton's dynamic batcher rule). `take`
then fills one batch by deficit round robin over the tenants, weighted, so a tenant with
a deep backlog gets its share and no more while a tenant with a trickle is served on its
next turn. Within a tenant, higher priority goes first, then arrival order.

An upload is never split across batches; one larger than `max_windows` rides alone.
Pure scheduling: no threads, no I/O; the clock is injected so tests can drive it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchPolicy", "MicroBatcher"]

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_windows: int = 32
    max_audio_seconds: float = 256.0
    max_wait_seconds: float = 0.02

    def __post_init__(self) -> None:
        if self.max_windows < 1 or self.max_audio_seconds <= 0 or self.max_wait_seconds < 0:
            raise ValueError(f"invalid batch policy {self}")


@dataclass(order=True)
class _Entry(Generic[T]):
    sort_key: tuple[int, int]
    queued_at: float = field(compare=False)
    windows: int = field(compare=False)
    seconds: float = field(compare=False)
    item: T = field(compare=False)


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        policy: BatchPolicy,
        *,
        weight: Callable[[str], float] = lambda tenant: 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._weight = weight
        self._clock = clock
        self._queues: dict[str, list[_Entry[T]]] = {}
        self._deficit: dict[str, float] = {}
        self._order: list[str] = []  # round-robin order of tenants with queued work
        self._next = 0
        self._turn_open = False
        self._seq = itertools.count()
        self._windows = 0
        self._seconds = 0.0

    def add(self, tenant: str, item: T, *, windows: int, seconds: float, priority: int = 0) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = []
            self._deficit[tenant] = 0.0
            self._order.append(tenant)
        entry = _Entry((-priority, next(self._seq)), self._clock(), max(1, windows), seconds, item)
        heapq.heappush(queue, entry)
        self._windows += entry.windows
        self._seconds += seconds

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def queued_windows(self) -> int:
        return self._windows

    def queued_by_tenant(self) -> dict[str, int]:
        return {tenant: len(queue) for tenant, queue in self._queues.items()}

    def deadline(self) -> float | None:
        """When the oldest queued item's wait runs out, or None when empty."""
        oldest = min((e.queued_at for q in self._queues.values() for e in q), default=None)
        return None if oldest is None else oldest + self.policy.max_wait_seconds

    def ready(self) -> bool:
        if not self._queues:
            return False
        if self._windows >= self.policy.max_windows or self._seconds >= self.policy.max_audio_seconds:
            return True
        deadline = self.deadline()
        return deadline is not None and self._clock() >= deadline

    def take(self) -> list[T]:
        """One batch, chosen by weighted deficit round robin. Empty when nothing is queued.

        A tenant's turn may straddle two batches: when the batch fills mid-turn, the next
        `take` continues that turn without crediting it again, so weights hold even when
        one turn's credit is larger than a whole batch.
        """
        batch: list[T] = []
        windows, seconds = 0, 0.0
        quantum = max(1.0, self.policy.max_windows / max(1, len(self._order)))
        # Every turn credits its tenant, so every round brings each head closer to fitting.
        while self._order:
            self._next %= len(self._order)
            tenant = self._order[self._next]
            queue = self._queues[tenant]
            if not self._turn_open:
                self._deficit[tenant] += quantum * self._weight(tenant)
                self._turn_open = True
            while queue and queue[0].windows <= self._deficit[tenant]:
                head = queue[0]
                fits = (
                    windows + head.windows <= self.policy.max_windows
                    and seconds + head.seconds <= self.policy.max_audio_seconds
                )
                if not fits and batch:
                    return batch  # the turn stays open for the next batch
                heapq.heappop(queue)
                self._deficit[tenant] -= head.windows
                windows += head.windows
                seconds += head.seconds
                self._windows -= head.windows
                self._seconds -= head.seconds
                batch.append(head.item)
            self._turn_open = False
            if not queue:
                self._drop(tenant)
            else:
                self._next += 1
            if windows >= self.policy.max_windows or seconds >= self.policy.max_audio_seconds:
                break
        return batch

    def _drop(self, tenant: str) -> None:
        index = self._order.index(tenant)
        self._order.pop(index)
        del self._queues[tenant]
        del self._deficit[tenant]  # an idle tenant keeps no credit (classic DRR)
        if index < self._next:
            self._next -= 1
