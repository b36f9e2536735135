"""Rate limits per client: GCRA (the generic cell rate algorithm), in this process or in Redis.

One limit is `rate` requests per second with `burst` allowed at once. GCRA keeps one number per
client, its theoretical arrival time (TAT); a request is allowed when TAT - now <= the burst
tolerance, and moves TAT one emission interval on. In Redis the whole decision is one Lua
script (atomic, one round trip, Redis's own clock), so every API replica shares the limit.

A Redis that cannot be reached lets requests through (and the API logs it): the rate limit
protects the pipeline, it must not become the reason the API is down. This module and
`services.store` are the only importers of redis.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.errors import FatalError

__all__ = ["Decision", "Limiter", "MemoryLimiter", "RedisLimiter", "open_limiter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: seconds until the client is back to a full burst
    reset_seconds: float
    #: seconds until the next request would be allowed (0 when allowed)
    retry_after_seconds: float

    def headers(self) -> dict[str, str]:
        values = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_seconds)),
        }
        if not self.allowed:
            values["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return values


def _decide(
    tat: float, now: float, rate: float, burst: int, cost: float = 1.0
) -> tuple[Decision, float | None]:
    """GCRA on one TAT for a request of `cost` units: (decision, the new TAT to store or None)."""
    interval = 1.0 / rate
    tolerance = interval * burst
    tat = max(tat, now)
    new_tat = tat + interval * cost
    allow_at = new_tat - tolerance
    if now < allow_at:
        remaining = 0
        return Decision(False, burst, remaining, tat - now, allow_at - now), None
    remaining = int(max(0.0, (tolerance - (new_tat - now)) / interval + 1e-9))
    return Decision(True, burst, remaining, new_tat - now, 0.0), new_tat


class Limiter(ABC):
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst

    @abstractmethod
    def hit(self, client: str, cost: float = 1.0) -> Decision:
        """Count `cost` units (one request; or seconds of audio) of `client` if the limit allows
        them. Blocks for at most one round trip."""

    def close(self) -> None:  # noqa: B027 - nothing to release in memory
        """Release connections."""


class MemoryLimiter(Limiter):
    """This process only (one API replica, tests)."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rate, burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def hit(self, client: str, cost: float = 1.0) -> Decision:
        with self._lock:
            now = self._clock()
            decision, new_tat = _decide(self._tat.get(client, now), now, self.rate, self.burst, cost)
            if new_tat is not None:
                self._tat[client] = new_tat
            if len(self._tat) > 100_000:
                self._tat = {k: v for k, v in self._tat.items() if v > now}
            return decision


# KEYS[1]: the client's TAT; ARGV: emission interval (s), burst, cost. Returns
# {allowed, remaining, reset_ms, retry_after_ms} as integers (Lua numbers lose their fraction
# on the way back to Redis, so milliseconds).
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, math.ceil((tat - now) * 1000), math.ceil((allow_at - now) * 1000)}
end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1)
local remaining = math.floor((tolerance - (new_tat - now)) / interval + 0.000001)
if remaining < 0 then remaining = 0 end
return {1, remaining, math.ceil((new_tat - now) * 1000), 0}
"""


class RedisLimiter(Limiter):
    """Shared by every API replica through one Redis."""

    def __init__(self, url: str, rate: float, burst: int, *, key_prefix: str = "audioguard") -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(rate, burst)
        self._errors: Any = redis.exceptions.RedisError
        self._prefix = key_prefix
        try:
            self._client: Any = redis.Redis.from_url(
                url, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
            )
        except ValueError as error:
            raise FatalError("bad_config", f"bad rate-limit Redis URL: {error}") from error
        self._script = self._client.register_script(_GCRA)

    def hit(self, client: str, cost: float = 1.0) -> Decision:
        try:
            allowed, remaining, reset_ms, retry_ms = self._script(
                keys=[f"{self._prefix}:ratelimit:{client}"], args=[1.0 / self.rate, self.burst, cost]
            )
        except self._errors as error:
            log.warning("rate limit store unavailable, letting the request through: %s", error)
            return Decision(True, self.burst, self.burst, 0.0, 0.0)
        return Decision(bool(allowed), self.burst, int(remaining), reset_ms / 1000, retry_ms / 1000)

    def close(self) -> None:
        self._client.close()


def open_limiter(url: str, rate: float, burst: int, *, key_prefix: str = "audioguard") -> Limiter:
    """memory:// or redis://host:port/db (rediss:// for TLS)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryLimiter(rate, burst)
    if scheme in ("redis", "rediss"):
        return RedisLimiter(url, rate, burst, key_prefix=key_prefix)
    raise FatalError("bad_config", f"unknown rate-limit URL {url!r}: use memory:// or redis://host:port/db")
