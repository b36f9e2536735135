"""The seams of the worker: what the pipeline needs from the things it is handed.

The pipeline never imports the detector, the storage, the verdict store, the dead-letter
envelope or the circuit breaker; the wiring (`services.tools.worker.build_worker`) hands it
objects with these shapes. Tests hand it small ones of their own, and the type checker holds
every implementation to the same contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from consumers.transport import Message, OutRecord
from consumers.work import Outcome, Work

if TYPE_CHECKING:
    from services.detector import Decision, ModelMeta

__all__ = [
    "AttemptCounter",
    "Breaker",
    "DeadLetterFactory",
    "Detector",
    "Hooks",
    "InFlightLedger",
    "NoHooks",
    "Outcome",
    "Storage",
    "StoreCall",
    "call_directly",
    "VerdictStore",
]


class Detector(Protocol):
    """The scoring runtime (services.detector.Detector, or the null scorer)."""

    @property
    def meta(self) -> ModelMeta: ...

    @property
    def device(self) -> str: ...

    def windows(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Samples at any rate -> (n, window_samples) float32 at the model rate; n >= 1."""
        ...

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, window_samples) -> (n,) scores in [0, 1]; may raise ResourceExhausted on OOM."""
        ...

    def speech(self, windows: np.ndarray) -> np.ndarray | None:
        """(n, window_samples) -> (n,) share of each window that is speech, or None when the
        scorer has no speech check. CPU work, called on the fetch threads."""
        ...

    def decide(
        self,
        window_scores: np.ndarray,
        speech: np.ndarray | None = None,
        duration_seconds: float | None = None,
    ) -> Decision:
        """One upload's window scores (and speech fractions) -> its label, score summary and timeline."""
        ...


class InFlightLedger(Protocol):
    """The in-flight accounting that admission charges and later steps settle
    (consumers.admission.InFlight). Thread-safe: fetch threads adjust it."""

    def adjust(self, tenant: str, delta_seconds: float) -> None:
        """The audio turned out `delta_seconds` longer (or shorter) than admitted."""
        ...

    def release(self, tenant: str, seconds: float) -> None:
        """One event of `tenant` and its `seconds` of audio left the pipeline."""
        ...


class Storage(Protocol):
    """Fetches audio objects for a tenant (services.storage.AudioStorage)."""

    def resolve(self, uri: str, tenant: str) -> object:
        """Checks `uri` without fetching: raises PoisonMessage for a URI the tenant may not read."""
        ...

    def fetch(
        self,
        uri: str,
        tenant: str,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> bytes:
        """Raises PoisonMessage for a URI the tenant may not read or an object that is not the
        one the event describes (size, sha256), RetryableError when transient."""
        ...


class VerdictStore(Protocol):
    """First-writer-wins verdicts by (tenant, idempotency key) (services.store)."""

    def get(self, tenant: str, key: str) -> bytes | None: ...

    def put_if_absent(self, tenant: str, key: str, verdict: bytes) -> bytes:
        """Store `verdict` unless one is there; return the stored one (the first writer's)."""
        ...


class AttemptCounter(Protocol):
    """Durable counts of attempts in progress by (tenant, idempotency key) (services.store):
    what the crash-loop quarantine (consumers.quarantine) remembers across a worker's death.
    Each call is one round trip for all its items."""

    def claim_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        """The counts already there; where none is, this attempt is counted now."""
        ...

    def begin_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        """One more attempt in progress for each; returns the new counts."""
        ...

    def undo_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        """Take back one attempt of each that ended without a crash (a graceful stop, a revoke)."""
        ...

    def clear_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        """Forget the counters of messages that are done."""
        ...


T = TypeVar("T")


class StoreCall(Protocol):
    """Runs one verdict-store call, e.g. with in-place retries of a brief hiccup (services.retry)."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


def call_directly(fn: Callable[[], T]) -> T:
    """A StoreCall without retries (tests, tools)."""
    return fn()


class Breaker(Protocol):
    """Watches the dead-letter rate; raises FatalError when it trips (dlq.breaker.DlqBreaker)."""

    def record_success(self) -> None: ...

    def record_dead_letter(self, reason: str = "unknown") -> None: ...


class DeadLetterFactory(Protocol):
    """Builds the dead-letter record of a failed message (dlq.envelope.DeadLetterWriter)."""

    def __call__(self, message: Message, error: BaseException, *, first_seen_at: datetime) -> OutRecord: ...


class Hooks(Protocol):
    """What the pipeline reports as it runs (consumers.instrumentation.PipelineHooks). Each call
    must be cheap and must not raise: metrics never stop a worker."""

    def consumed(self, work: Work) -> None: ...

    def batch_scored(self, batch: list[Work], seconds: float) -> None: ...

    def done(self, work: Work) -> None: ...

    def paused(self, tenants: Iterable[str]) -> None: ...

    def resumed(self, tenants: Iterable[str]) -> None: ...

    def turn(self, worker: object) -> None: ...


class NoHooks:
    """Hooks that report nothing (tests, tools that count for themselves)."""

    def consumed(self, work: Work) -> None:
        pass

    def batch_scored(self, batch: list[Work], seconds: float) -> None:
        pass

    def done(self, work: Work) -> None:
        pass

    def paused(self, tenants: Iterable[str]) -> None:
        pass

    def resumed(self, tenants: Iterable[str]) -> None:
        pass

    def turn(self, worker: object) -> None:
        pass
