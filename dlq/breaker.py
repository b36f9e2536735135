"""The dead-letter circuit breaker (the idea of Arroyo's ``DlqLimit``).

A bad deploy, a schema change the workers do not understand or an expired credential can
make *every* arrival fail. Dead-lettering all of that traffic would ack it, hide the
incident in a DLQ and leave on-call to replay millions of messages. The breaker stops the
worker instead: `record_dead_letter` raises ``FatalError("dlq_circuit_open")`` once

* more than ``max_invalid_ratio`` of the last ``window`` outcomes were dead letters
  (judged only once at least ``min_outcomes`` outcomes were seen, so the first few
  failures after a start cannot trip it on their own), or
* more than ``max_consecutive`` dead letters came in a row.

The settings are maxima that are still allowed: with ``max_consecutive=100`` the 100th
dead letter in a row passes and the 101st raises. Once open, the breaker stays open (every
further `record_dead_letter` raises) until `reset`; the worker is meant to stop, and
what it did not ack is delivered again after the restart.

Call `record_dead_letter` just before publishing a dead letter: when it raises, do not
publish or ack that message. Call `record_success` for each verdict. One breaker per worker;
it is thread-safe. This module must never publish, sleep or import an SDK.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

from services.errors import FatalError
from services.settings import DlqSettings

__all__ = ["DEFAULT_MIN_OUTCOMES", "DlqBreaker"]

#: outcomes needed before the ratio is judged (capped at the window size)
DEFAULT_MIN_OUTCOMES = 20


class DlqBreaker:
    """Counts verdicts and dead letters over a sliding window; trips on too many dead letters."""

    def __init__(self, settings: DlqSettings, *, min_outcomes: int = DEFAULT_MIN_OUTCOMES) -> None:
        if settings.window < 1:
            raise FatalError("bad_config", f"dlq.window must be at least 1, got {settings.window}")
        if not 0 <= settings.max_invalid_ratio <= 1:
            raise FatalError(
                "bad_config", f"dlq.max_invalid_ratio must be within [0, 1], got {settings.max_invalid_ratio}"
            )
        if settings.max_consecutive < 0:
            raise FatalError(
                "bad_config", f"dlq.max_consecutive must be >= 0, got {settings.max_consecutive}"
            )
        self.max_invalid_ratio = settings.max_invalid_ratio
        self.window = settings.window
        self.max_consecutive = settings.max_consecutive
        self.min_outcomes = max(1, min(min_outcomes, self.window))
        self._lock = threading.Lock()
        # None = a verdict; a string = a dead letter and its reason (for the trip message)
        self._outcomes: deque[str | None] = deque(maxlen=self.window)
        self._dead_letters = 0
        self._consecutive = 0
        self._tripped: str | None = None

    @property
    def is_open(self) -> bool:
        """True once the breaker tripped (until `reset`)."""
        return self._tripped is not None

    @property
    def consecutive(self) -> int:
        return self._consecutive

    def ratio(self) -> float:
        """Share of dead letters among the outcomes in the window (0.0 when empty)."""
        with self._lock:
            return self._dead_letters / len(self._outcomes) if self._outcomes else 0.0

    def record_success(self) -> None:
        """One arrival became a verdict."""
        with self._lock:
            self._push(None)
            self._consecutive = 0

    def record_dead_letter(self, reason: str = "unknown") -> None:
        """One arrival is about to be dead-lettered. Raises ``FatalError("dlq_circuit_open")``
        (and stays open) when that passes the policy; `reason` only feeds the error message."""
        with self._lock:
            if self._tripped is not None:
                raise FatalError("dlq_circuit_open", self._tripped)
            self._push(reason)
            self._consecutive += 1
            problem = self._check()
            if problem is not None:
                self._tripped = problem
                raise FatalError("dlq_circuit_open", problem)

    def reset(self) -> None:
        """Close the breaker and forget every outcome (tests, or an operator's explicit restart)."""
        with self._lock:
            self._outcomes.clear()
            self._dead_letters = 0
            self._consecutive = 0
            self._tripped = None

    def _push(self, outcome: str | None) -> None:
        if len(self._outcomes) == self.window and self._outcomes[0] is not None:
            self._dead_letters -= 1  # the oldest dead letter is about to slide out
        self._outcomes.append(outcome)
        if outcome is not None:
            self._dead_letters += 1

    def _check(self) -> str | None:
        if self._consecutive > self.max_consecutive:
            return (
                f"{self._consecutive} dead letters in a row (max_consecutive {self.max_consecutive}); "
                f"{self._reasons()}. Stopping instead of dead-lettering all traffic: fix the cause, "
                "then restart; unacked arrivals will be delivered again"
            )
        seen = len(self._outcomes)
        if seen >= self.min_outcomes and self._dead_letters / seen > self.max_invalid_ratio:
            return (
                f"{self._dead_letters} of the last {seen} outcomes were dead letters "
                f"(ratio {self._dead_letters / seen:.2f} > max_invalid_ratio {self.max_invalid_ratio:.2f}, "
                f"window {self.window}); {self._reasons()}. Stopping instead of dead-lettering all "
                "traffic: fix the cause, then restart; unacked arrivals will be delivered again"
            )
        return None

    def _reasons(self) -> str:
        counts = Counter(reason for reason in self._outcomes if reason is not None)
        top = ", ".join(f"{reason} x{count}" for reason, count in counts.most_common(3))
        return f"most common reasons: {top}"
