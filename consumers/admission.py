"""Admission: the backpressure gate in front of the pipeline, and the in-flight accounting.

`Admit` is the first step and the only one that refuses work (`MessageRejected`): it
bounds the events and seconds of audio in flight per tenant and in total, which bounds
every queue behind it, and it enforces a tenant's optional token-bucket rate. The runner
holds a refused message, pauses the partitions of the tenants that caused the refusal
(the tenants over their weighted share first, see `Admit.to_pause`) and resumes each one
once `Admit.may_resume` says so. A refusal never drops anything: the backlog stays in the
broker.

This module must never sleep, do I/O or hold messages itself: it only decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from consumers.steps import Step, _Forwarding
from consumers.transport import Message, MessageRejected
from consumers.work import Work

__all__ = ["Admit", "InFlight", "TenantLoad", "TokenBucket", "TOTAL_REASONS"]

#: rejections caused by the worker-wide bounds rather than by the tenant's own
TOTAL_REASONS = frozenset({"total_events", "total_audio_seconds"})


class TokenBucket:
    """`rate` tokens per second up to `burst`; starts full. Not thread-safe (runner thread only)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"invalid token bucket rate={rate} burst={burst}")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def tokens(self, now: float) -> float:
        # a clock that steps back (tests, or a monotonic clock across threads) must not drain it
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        return self._tokens

    def take(self, now: float) -> bool:
        if self.tokens(now) >= 1.0:
            self._tokens -= 1.0
            return True
        return False


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

    def limits(self, tenant: str) -> tuple[int, float]:
        """The tenant's own caps: (events, seconds of audio)."""
        return self._tenant_limits(tenant)

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

    def tenant_below_low_water(self, tenant: str) -> bool:
        """The tenant's own usage is below the low-water fraction of its own caps."""
        tenant_events, tenant_seconds = self._tenant_limits(tenant)
        lw = self.low_water
        return (
            self.events.get(tenant, 0) <= tenant_events * lw
            and self.seconds.get(tenant, 0.0) <= tenant_seconds * lw
        )

    def total_below_low_water(self) -> bool:
        lw = self.low_water
        return self.total_events() <= self.max_events * lw and self.total_seconds() <= self.max_seconds * lw

    def below_low_water(self, tenant: str) -> bool:
        return self.tenant_below_low_water(tenant) and self.total_below_low_water()

    def over_share(self, weight: Callable[[str], float], also: Iterable[str] = ()) -> list[str]:
        """Tenants holding more than their weighted share of the worker-wide bounds.

        The share is taken among the tenants with work in flight (plus `also`), so a tenant
        alone may use everything and a second one arriving gets its share back.
        """
        active = {t for t, n in self.events.items() if n > 0} | set(also)
        if not active:
            return []
        weights = {t: weight(t) for t in active}
        total_weight = sum(weights.values())
        over = []
        for tenant in sorted(active):
            share = weights[tenant] / total_weight
            if (
                self.events.get(tenant, 0) > self.max_events * share
                or self.seconds.get(tenant, 0.0) > self.max_seconds * share
            ):
                over.append(tenant)
        return over

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


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's admission state at one moment (the observability layer turns it into gauges)."""

    tenant: str
    events: int
    audio_seconds: float
    max_events: int
    max_audio_seconds: float
    #: tokens in the rate bucket, None when the tenant has no rate limit
    rate_tokens: float | None
    #: refusals so far, by reason (tenant_events, tenant_audio_seconds, total_*, tenant_rate)
    rejections: dict[str, int]


class Admit(_Forwarding):
    """The backpressure gate: rejects when the tenant or the worker is at its in-flight bound,
    or when the tenant is over its token-bucket rate.

    `rate(tenant)` gives (rate_per_second or None, burst); `weight(tenant)` the tenant's
    share under contention. Both are read from the tenant's frozen `TenantPolicy`.
    """

    def __init__(
        self,
        next_step: Step,
        in_flight: InFlight,
        clock: Callable[[], float] = time.monotonic,
        *,
        rate: Callable[[str], tuple[float | None, int]] = lambda tenant: (None, 1),
        weight: Callable[[str], float] = lambda tenant: 1.0,
    ) -> None:
        super().__init__(next_step)
        self.in_flight = in_flight
        self._clock = clock
        self._rate = rate
        self._weight = weight
        self._buckets: dict[str, TokenBucket | None] = {}
        #: (tenant, reason) -> refusals so far
        self.rejections: dict[tuple[str, str], int] = {}

    def _bucket(self, tenant: str) -> TokenBucket | None:
        if tenant not in self._buckets:
            rate, burst = self._rate(tenant)
            self._buckets[tenant] = None if rate is None else TokenBucket(rate, burst, self._clock())
        return self._buckets[tenant]

    def submit(self, work: Work) -> None:
        raise TypeError("Admit takes messages: use admit(message)")

    def admit(self, message: Message) -> Work:
        """Admit `message` or raise `MessageRejected(reason)`; never blocks."""
        tenant = message.tenant
        reason = self.in_flight.check(tenant)
        bucket = self._bucket(tenant)
        # a token is spent only when the in-flight bounds let the event in
        if reason is None and bucket is not None and not bucket.take(self._clock()):
            reason = "tenant_rate"
        if reason is not None:
            key = (tenant, reason)
            self.rejections[key] = self.rejections.get(key, 0) + 1
            raise MessageRejected(reason)
        self.in_flight.add(tenant, 0.0)
        work = Work(message=message, admitted_at=self._clock())
        self._forward(work)
        return work

    def to_pause(self, tenant: str, reason: str) -> list[str]:
        """Whose partitions to pause after `tenant` was refused for `reason`.

        A tenant's own bound or rate pauses only that tenant. A worker-wide bound pauses the
        tenants over their weighted share first; the refused tenant is paused too (its
        message is held and nothing more of it may pile up in memory), but `may_resume`
        lets it back as soon as its held message is in, while the heavy ones wait for the
        low-water mark.
        """
        if reason not in TOTAL_REASONS:
            return [tenant]
        return sorted(set(self.in_flight.over_share(self._weight, also=[tenant])) | {tenant})

    def may_resume(self, tenant: str) -> bool:
        """Whether a paused tenant (with nothing held) may be consumed again.

        Below the low-water mark of its own caps, with at least half a burst of tokens (so a
        rate-limited tenant is not paused and resumed on every single token), and either
        the whole worker below its low-water mark or the tenant within its weighted share.
        """
        if not self.in_flight.tenant_below_low_water(tenant):
            return False
        bucket = self._bucket(tenant)
        if bucket is not None and bucket.tokens(self._clock()) < max(1.0, bucket.burst / 2):
            return False
        if self.in_flight.total_below_low_water():
            return True
        return tenant not in self.in_flight.over_share(self._weight, also=[tenant])

    def load(self, tenant: str) -> TenantLoad:
        max_events, max_seconds = self.in_flight.limits(tenant)
        bucket = self._bucket(tenant)
        return TenantLoad(
            tenant=tenant,
            events=self.in_flight.events.get(tenant, 0),
            audio_seconds=self.in_flight.seconds.get(tenant, 0.0),
            max_events=max_events,
            max_audio_seconds=max_seconds,
            rate_tokens=None if bucket is None else bucket.tokens(self._clock()),
            rejections={r: n for (t, r), n in self.rejections.items() if t == tenant},
        )
