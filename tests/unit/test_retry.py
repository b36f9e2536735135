"""retry_call: which errors are retried, how many times, how long, and how the pauses grow.
A fake clock advanced by a fake sleep stands in for time, so nothing here waits."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from services.errors import FatalError, PoisonMessage, ResourceExhausted, RetryableError
from services.retry import RetryBudget, backoff_ceiling, retry_call
from services.settings import RetrySettings


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception, result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return fn, calls


def policy(**overrides: float) -> RetrySettings:
    base = {
        "attempts": 4,
        "initial_backoff_seconds": 0.1,
        "max_backoff_seconds": 2.0,
        "max_total_seconds": 15.0,
    }
    base.update(overrides)
    return RetrySettings(**base)


def test_success_after_transient_failures() -> None:
    fake = FakeTime()
    fn, calls = failing(2, RetryableError("store_unavailable"))
    seen: list[tuple[int, str]] = []
    result = retry_call(
        fn,
        policy(),
        sleep=fake.sleep,
        clock=fake.clock,
        on_retry=lambda attempt, error: seen.append((attempt, str(error))),
    )
    assert result == "ok"
    assert len(calls) == 3
    assert seen == [(1, "store_unavailable"), (2, "store_unavailable")]
    assert len(fake.sleeps) == 2


def test_exhausted_attempts_reraise_the_last_retryable_error() -> None:
    fake = FakeTime()
    errors = iter([RetryableError("throttled", f"try {i}") for i in range(1, 10)])
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise next(errors)

    with pytest.raises(RetryableError) as caught:
        retry_call(fn, policy(attempts=4), sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 4
    assert len(fake.sleeps) == 3  # no pause after the last attempt
    assert caught.value.reason == "throttled" and caught.value.message == "try 4"


def test_subclasses_of_retryable_are_retried() -> None:
    fake = FakeTime()
    fn, calls = failing(1, ResourceExhausted("cuda_oom"))
    assert retry_call(fn, policy(), sleep=fake.sleep, clock=fake.clock) == "ok"
    assert len(calls) == 2


@pytest.mark.parametrize(
    "error", [PoisonMessage("schema"), FatalError("auth"), ValueError("bug"), KeyError("k")]
)
def test_other_errors_pass_through_at_once(error: Exception) -> None:
    fake = FakeTime()
    fn, calls = failing(5, error)
    with pytest.raises(type(error)) as caught:
        retry_call(fn, policy(), sleep=fake.sleep, clock=fake.clock)
    assert caught.value is error
    assert len(calls) == 1
    assert fake.sleeps == []


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    assert [backoff_ceiling(policy(), n) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    # rng at its top end: every pause reaches its ceiling
    fake = FakeTime()
    fn, _ = failing(100, RetryableError("x"))
    with pytest.raises(RetryableError):
        retry_call(
            fn, policy(attempts=8, max_total_seconds=100), sleep=fake.sleep, clock=fake.clock, rng=lambda: 1.0
        )
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    # rng at a fixed fraction: the pause is that fraction of the ceiling (full jitter: [0, ceiling])
    fake = FakeTime()
    with pytest.raises(RetryableError):
        retry_call(
            fn,
            policy(attempts=4, max_total_seconds=100),
            sleep=fake.sleep,
            clock=fake.clock,
            rng=lambda: 0.25,
        )
    assert fake.sleeps == pytest.approx([0.025, 0.05, 0.1])


def test_real_jitter_stays_within_the_ceilings() -> None:
    fake = FakeTime()
    fn, _ = failing(1000, RetryableError("x"))
    with pytest.raises(RetryableError):
        retry_call(fn, policy(attempts=200, max_total_seconds=10_000), sleep=fake.sleep, clock=fake.clock)
    assert len(fake.sleeps) == 199
    for n, pause in enumerate(fake.sleeps, start=1):
        assert 0 <= pause <= backoff_ceiling(policy(), n)
    # jitter really varies (199 identical pauses would mean it is not random)
    assert len({round(p, 9) for p in fake.sleeps[6:]}) > 100


def test_total_time_is_bounded() -> None:
    fake = FakeTime()
    fn, calls = failing(1000, RetryableError("x"))
    with pytest.raises(RetryableError):
        retry_call(
            fn,
            policy(attempts=1000, initial_backoff_seconds=1, max_backoff_seconds=4, max_total_seconds=10),
            sleep=fake.sleep,
            clock=fake.clock,
            rng=lambda: 1.0,
        )
    # pauses 1, 2, 4, then 3 (cut to end at the 10 s bound): calls at t=0, 1, 3, 7, 10
    assert fake.sleeps == pytest.approx([1, 2, 4, 3])
    assert len(calls) == 5
    assert fake.now - 100.0 == pytest.approx(10)


def test_slow_calls_count_against_the_bound() -> None:
    fake = FakeTime()
    calls: list[int] = []

    def slow() -> None:
        calls.append(1)
        fake.now += 6  # each call itself takes 6 s
        raise RetryableError("slow")

    with pytest.raises(RetryableError):
        retry_call(slow, policy(attempts=10, max_total_seconds=15), sleep=fake.sleep, clock=fake.clock)
    # calls start at ~0, ~6, ~12; the third ends at ~18 > 15, so no fourth
    assert len(calls) == 3


def test_zero_attempts_still_calls_once() -> None:
    assert RetryBudget.of(policy(attempts=0)).attempts == 1
    fn, calls = failing(0, RetryableError("x"))
    assert retry_call(fn, policy(attempts=0)) == "ok"
    assert len(calls) == 1


def test_retries_are_logged_with_the_description(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    fn, _ = failing(1, RetryableError("store_unavailable", "connection refused"))
    with caplog.at_level(logging.WARNING, logger="services.retry"):
        retry_call(fn, policy(), describe="fetch s3://b/k", sleep=fake.sleep, clock=fake.clock)
    assert "retrying fetch s3://b/k after attempt 1/4: store_unavailable: connection refused" in caplog.text


def test_real_sleep_is_used_by_default() -> None:
    fn, calls = failing(2, RetryableError("x"))
    assert retry_call(fn, policy(initial_backoff_seconds=0.001, max_backoff_seconds=0.002)) == "ok"
    assert len(calls) == 3
