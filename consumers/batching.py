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

__all__ = ["BatchPolicy", "BatchSizeTuner", "MicroBatcher"]

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


class BatchSizeTuner:
    """Chooses the batch cap from measured model speed: a hill climb over powers of two.

    The best batch size depends on the device: a GPU wants 64-128 windows, while a small CNN
    on two CPU threads can be slower per window at 64 than at 8 (caches). Only *full*
    batches count (at least `full_ratio` of the cap): a batch released by its deadline says
    nothing about the cap. It first sweeps every size from `ceiling` down (`samples` full
    batches each; CPU curves are not smooth, so a hill climb alone stops at a false peak),
    settles on the *largest* size within `tolerance` of the fastest, and every
    `explore_every` full batches forgets what it measured and climbs from there through the
    neighbours, moving only to one more than `tolerance` faster, so a changed machine (other
    load, a new model) is noticed. Why the largest: the tuner sees only the forward pass, but
    every batch also costs the loop a turn (publish, commit, hooks); on the 2-core bench the
    forward was as fast per window at 3 windows as at 15 while the whole pipeline ran 64-70
    uploads/s at caps 1-4 and 82-87 at caps 8-16. `ceiling`
    (settings.batch.max_windows) is never exceeded: it is the operator's memory bound.
    Pure arithmetic, no clock, no I/O.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        floor: int = 1,
        samples: int = 6,
        min_windows: int = 48,
        explore_every: int = 300,
        full_ratio: float = 0.75,
        tolerance: float = 0.1,
        overhead_seconds: float = 0.0,
    ) -> None:
        if ceiling < 1 or floor < 1 or floor > ceiling or samples < 1:
            raise ValueError("need 1 <= floor <= ceiling and samples >= 1")
        sizes = {ceiling, floor}
        size = 1
        while size < ceiling:
            if size >= floor:
                sizes.add(size)
            size *= 2
        self.sizes = sorted(sizes)
        self.current = ceiling
        self.samples = samples
        #: a size counts as measured only after this many windows too: six batches of one or
        #: two windows are a few milliseconds of work, and one scheduler hiccup in them once
        #: made the tuner settle on 2 (68.8 uploads/s against 92.6 at 8 on the same bench)
        self.min_windows = min_windows
        self.explore_every = explore_every
        self.full_ratio = full_ratio
        self.tolerance = tolerance
        #: what a batch costs besides its forward pass (the loop turns that hand it to the
        #: scorer and take it back): with a scorer that costs nothing (the null scorer, a
        #: large GPU) the forward times alone are noise, and a small cap chosen from them
        #: held the pipeline to one or two uploads per loop turn (docs/BENCHMARKS.md, issue 16)
        self.overhead_seconds = overhead_seconds
        #: size -> (windows, seconds) summed over its full batches since it was last (re)measured
        self.measured: dict[int, tuple[int, float]] = {}
        self._count: dict[int, int] = {}
        self._full = 0
        self._sweeping = True

    def rate(self, size: int) -> float | None:
        """Measured windows per second of the model at `size`, or None."""
        found = self.measured.get(size)
        return None if found is None or found[1] <= 0 else found[0] / found[1]

    def _enough(self, size: int) -> bool:
        windows = self.measured.get(size, (0, 0.0))[0]
        return self._count.get(size, 0) >= self.samples and windows >= self.min_windows

    def observe(self, windows: int, seconds: float) -> int:
        """One scored batch; returns the cap to use next (maybe unchanged)."""
        if seconds <= 0 or windows < self.full_ratio * self.current:
            return self.current
        seconds += self.overhead_seconds
        total_w, total_s = self.measured.get(self.current, (0, 0.0))
        self.measured[self.current] = (total_w + windows, total_s + seconds)
        self._count[self.current] = self._count.get(self.current, 0) + 1
        self._full += 1
        if self._full % self.explore_every == 0 and not self._sweeping:
            # measure again from here: old numbers describe the machine as it was
            self.measured, self._count = {}, {}
            return self.current
        if not self._enough(self.current):
            return self.current
        if self._sweeping:
            untried = [n for n in self.sizes if not self._enough(n)]
            if untried:
                self.current = max(untried)
                return self.current
            self._sweeping = False
            fastest = max(self.rate(n) or 0.0 for n in self.sizes)
            self.current = max(
                n for n in self.sizes if (self.rate(n) or 0.0) >= (1 - self.tolerance) * fastest
            )
            return self.current
        index = self.sizes.index(self.current)
        neighbours = [self.sizes[i] for i in (index - 1, index + 1) if 0 <= i < len(self.sizes)]
        here = self.rate(self.current) or 0.0
        tried = [n for n in neighbours if self._enough(n)]
        better = [n for n in tried if (self.rate(n) or 0.0) > (1 + self.tolerance) * here]
        if better:
            # a measured neighbour is faster: go back there (a hill climb, not a full sweep)
            self.current = max(better, key=lambda n: self.rate(n) or 0.0)
            return self.current
        untried = [n for n in neighbours if n not in tried]
        if untried:
            self.current = untried[0]
        return self.current
