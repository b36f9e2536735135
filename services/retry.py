"""In-place retries for storage fetches, store calls and publishes (tenacity).

`retry_call(fn, policy)` calls `fn` until it returns, retrying only `RetryableError`:
exponential backoff with *full jitter* (each pause is uniform in [0, ceiling], the ceiling
doubling from ``initial_backoff_seconds`` up to ``max_backoff_seconds``), at most
``policy.attempts`` calls, and no pause that would run past ``max_total_seconds`` from the
first call (the last pause is cut short to end at that bound; no call starts after it).
Full jitter spreads a fleet's retries after a shared outage instead of synchronising them.

`PoisonMessage`, `FatalError` and anything that is not an `AudioguardError` pass through
at once: retrying cannot fix them. When the attempts or the time run out, the *last*
`RetryableError` is re-raised unchanged, so its ``reason`` reaches the dead letter.

This module must never sleep past its bound or swallow an error, and never imports an SDK:
the adapters translate their errors into `services.errors` before they get here. A call
that blocks is bounded by its own timeout, not by this module.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type

from services.errors import RetryableError
from services.settings import RetrySettings

__all__ = ["RetryBudget", "backoff_ceiling", "jittered", "retry_call"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: every pause's jitter comes from this generator of our own: the worker's background threads
#: (pollers, publishers, webhook deliveries) must not advance the process's global `random`
#: state, which a host application may have seeded (and which hypothesis checks while it draws)
_JITTER = random.Random()


def jittered(delay: float) -> float:
    """`delay` times a factor uniform in [0.5, 1): clients that failed together retry apart."""
    return delay * _JITTER.uniform(0.5, 1.0)


def backoff_ceiling(policy: RetrySettings, retry_number: int) -> float:
    """The largest pause before retry `retry_number` (1 = the pause after the first failure)."""
    exponent = min(max(retry_number - 1, 0), 62)  # 2**62 s is already forever; avoid float overflow
    return float(min(policy.max_backoff_seconds, policy.initial_backoff_seconds * 2**exponent))


@dataclass(frozen=True)
class RetryBudget:
    """What a `retry_call` may spend, read from `RetrySettings` (attempts of at least 1)."""

    attempts: int
    max_total_seconds: float

    @classmethod
    def of(cls, policy: RetrySettings) -> RetryBudget:
        return cls(attempts=max(1, policy.attempts), max_total_seconds=max(0.0, policy.max_total_seconds))


def retry_call(
    fn: Callable[[], T],
    policy: RetrySettings,
    *,
    describe: str = "",
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = _JITTER.random,
) -> T:
    """Call `fn` and return its result, retrying `RetryableError` per `policy`.

    on_retry(attempt, error) runs before each pause: `attempt` is the 1-based number of the call
    that just failed (for metrics and logs). `sleep`, `clock` and `rng` (uniform in [0, 1)) are
    injectable so tests run without waiting. Blocks for at most about `policy.max_total_seconds`
    plus the duration of the calls themselves.
    """
    budget = RetryBudget.of(policy)
    started = clock()
    deadline = started + budget.max_total_seconds
    try:
        # the common case is one call that works: tenacity's machinery (hundreds of
        # microseconds, twice per upload on the worker's loop thread) only once one failed
        return fn()
    except RetryableError as error:
        failed: list[RetryableError] = [error]

    def again() -> T:
        if failed:
            raise failed.pop()  # tenacity's attempt 1 is the call that just failed
        return fn()

    def stop(state: RetryCallState) -> bool:
        return state.attempt_number >= budget.attempts or clock() >= deadline

    def wait(state: RetryCallState) -> float:
        pause = rng() * backoff_ceiling(policy, state.attempt_number)
        return max(0.0, min(pause, deadline - clock()))

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is None:  # pragma: no cover - tenacity only sleeps after a failure
            return
        log.warning(
            "retrying %s after attempt %d/%d: %s",
            describe or getattr(fn, "__qualname__", "call"),
            state.attempt_number,
            budget.attempts,
            error,
        )
        if on_retry is not None:
            on_retry(state.attempt_number, error)

    retrying = Retrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(RetryableError),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(again)
