"""The one error taxonomy of audioguard.

Every failure a worker can meet is translated, once, at the boundary of the adapter that
met it, into one of three families. The runner decides what to do by family alone:

    AudioguardError
     ├── RetryableError        transient; may succeed later
     │    │                    (network, throttling, partial publish, broker unavailable,
     │    │                     whole-batch scoring failure)
     │    └── ResourceExhausted  the accelerator ran out of memory: split the batch first
     ├── PoisonMessage         this message can never succeed; dead-letter it at once
     │                         (schema violation, tenant mismatch, hostile or unknown URI,
     │                          missing object, oversize, undecodable or silent audio, an
     │                          idempotency conflict, a submitted_at or byte_size that lies,
     │                          in progress each time workers died: crashed_worker)
     └── FatalError            the worker cannot go on; stop and let the orchestrator restart
                               (auth, missing topic, bad config, model checksum mismatch,
                                dead-letter circuit breaker tripped)

Each error carries a short, stable ``reason`` code (``schema``, ``tenant_mismatch``,
``sha256_mismatch`` ...): dashboards, the DLQ tool and the poison-corpus tests key on it,
so a reason code is part of the contract and is never reworded casually.

This module must never import an SDK: adapters import it, not the other way round.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AudioguardError",
    "RetryableError",
    "ResourceExhausted",
    "PoisonMessage",
    "FatalError",
]


class AudioguardError(Exception):
    """Base of every error audioguard raises on purpose."""

    category: ClassVar[str] = "error"

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        self.message = message or reason
        super().__init__(f"{reason}: {self.message}" if message else reason)


class RetryableError(AudioguardError):
    """Transient failure: retry with bounded exponential backoff, then dead-letter."""

    category = "retries_exhausted"


class ResourceExhausted(RetryableError):
    """Out of accelerator memory: split the batch before any item is blamed."""


class PoisonMessage(AudioguardError):
    """The message itself is bad: dead-letter it at once, never retry."""

    category = "poison"


class FatalError(AudioguardError):
    """The worker cannot continue safely: stop with a non-zero exit."""

    category = "fatal"
