"""The dead-letter circuit breaker: when it trips, when it must not, and what it says."""

from __future__ import annotations

import threading

import pytest

from dlq.breaker import DEFAULT_MIN_OUTCOMES, DlqBreaker
from services.errors import FatalError
from services.settings import DlqSettings


def breaker(
    ratio: float = 0.5, window: int = 10, consecutive: int = 1000, min_outcomes: int = 4
) -> DlqBreaker:
    return DlqBreaker(
        DlqSettings(max_invalid_ratio=ratio, window=window, max_consecutive=consecutive),
        min_outcomes=min_outcomes,
    )


def test_mostly_good_traffic_never_trips() -> None:
    b = breaker(ratio=0.5, window=10)
    for _ in range(100):
        b.record_success()
        b.record_dead_letter("schema")  # exactly half: not *more* than the ratio
    assert not b.is_open
    assert b.ratio() == pytest.approx(0.5)


def test_ratio_over_the_window_trips_with_the_numbers() -> None:
    b = breaker(ratio=0.5, window=10)
    for _ in range(5):
        b.record_success()
    for _ in range(5):
        b.record_dead_letter("schema")  # 5 of 10: allowed
    b.record_success()  # slides one success out, one in: still 5 of 10
    assert not b.is_open
    with pytest.raises(FatalError) as caught:
        b.record_dead_letter("schema")  # 6 of 10 (the oldest success slid out): trips
    assert b.is_open
    assert caught.value.reason == "dlq_circuit_open"
    assert "6 of the last 10" in str(caught.value)
    assert "0.60 > max_invalid_ratio 0.50" in str(caught.value)
    assert "schema x6" in str(caught.value)
    # and it stays open, with the same explanation
    with pytest.raises(FatalError, match="6 of the last 10"):
        b.record_dead_letter("schema")


def test_the_trip_itself_raises() -> None:
    b = breaker(ratio=0.5, window=4, min_outcomes=4)
    b.record_success()
    b.record_dead_letter()
    b.record_dead_letter()
    with pytest.raises(FatalError, match="3 of the last 4"):
        b.record_dead_letter()


def test_no_trip_before_the_minimum_number_of_outcomes() -> None:
    b = breaker(ratio=0.1, window=100, min_outcomes=20)
    for _ in range(19):
        b.record_dead_letter("undecodable")  # 100 % dead letters, but only 19 outcomes seen
    assert not b.is_open
    with pytest.raises(FatalError, match="20 of the last 20"):
        b.record_dead_letter("undecodable")


def test_min_outcomes_defaults_and_is_capped_by_the_window() -> None:
    assert DlqBreaker(DlqSettings()).min_outcomes == DEFAULT_MIN_OUTCOMES
    assert DlqBreaker(DlqSettings(window=5)).min_outcomes == 5


def test_consecutive_dead_letters_trip_even_below_the_ratio() -> None:
    b = breaker(ratio=0.9, window=1000, consecutive=5, min_outcomes=1000)
    for _ in range(3):
        b.record_dead_letter("tenant_mismatch")
        b.record_success()  # a verdict resets the run
    for _ in range(5):
        b.record_dead_letter("tenant_mismatch")  # the 5th in a row is still allowed
    assert b.consecutive == 5 and not b.is_open
    with pytest.raises(FatalError) as caught:
        b.record_dead_letter("tenant_mismatch")
    assert caught.value.reason == "dlq_circuit_open"
    assert "6 dead letters in a row (max_consecutive 5)" in str(caught.value)
    assert "tenant_mismatch x" in str(caught.value)


def test_old_dead_letters_slide_out_of_the_window() -> None:
    b = breaker(ratio=0.5, window=10, min_outcomes=10)
    for _ in range(5):
        b.record_dead_letter()
    for _ in range(20):
        b.record_success()
    assert b.ratio() == 0.0
    for _ in range(5):
        b.record_dead_letter()
    assert not b.is_open and b.ratio() == pytest.approx(0.5)


def test_reset_closes_it() -> None:
    b = breaker(ratio=0.5, window=4, min_outcomes=1)
    with pytest.raises(FatalError):
        b.record_dead_letter()
    b.reset()
    assert not b.is_open and b.ratio() == 0.0
    b.record_success()
    b.record_dead_letter()  # 1 of 2: allowed again


@pytest.mark.parametrize(
    "settings",
    [
        {"window": 0},
        {"max_invalid_ratio": 1.5},
        {"max_invalid_ratio": -0.1},
        {"max_consecutive": -1},
    ],
)
def test_bad_settings_are_bad_config(settings: dict[str, float]) -> None:
    with pytest.raises(FatalError) as caught:
        DlqBreaker(DlqSettings(**settings))
    assert caught.value.reason == "bad_config"


def test_counts_stay_exact_under_threads() -> None:
    b = breaker(ratio=1.0, window=10_000, consecutive=10**9, min_outcomes=1)

    def work() -> None:
        for i in range(2000):
            if i % 4 == 0:
                b.record_dead_letter()
            else:
                b.record_success()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert b.ratio() == pytest.approx(0.25)
