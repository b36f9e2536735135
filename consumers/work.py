"""The value that travels through the pipeline: one arrival, with everything learnt about it.

Every step receives a `Work` and forwards a new one (`dataclasses.replace`); the message's
ack token travels inside it, so batching, dead-lettering and commits never lose track of
what may be acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from consumers.transport import Message, OutRecord
from schemas import AudioArrival

__all__ = ["Outcome", "Work"]

#: how one message left the pipeline ("" while it is still on its way)
Outcome = Literal["", "verdict", "duplicate", "dead_letter", "retry"]


@dataclass(frozen=True)
class Work:
    """One arrival on its way through the pipeline. Replaced, never mutated."""

    message: Message
    admitted_at: float
    arrival: AudioArrival | None = None
    windows: np.ndarray | None = None
    #: per-window share of speech (the detector's VAD), None when the scorer has no speech check
    speech: np.ndarray | None = None
    duration_seconds: float = 0.0
    scoring_started: float | None = None
    scoring_seconds: float = 0.0
    scores: np.ndarray | None = None
    #: the detector that scored this upload (consumers.models): it decides, and the verdict names it
    scored_by: Any = field(default=None, compare=False, repr=False)
    record: OutRecord | None = None
    outcome: Outcome = ""
    label: str | None = None
    error: BaseException | None = field(default=None, compare=False)

    @property
    def tenant(self) -> str:
        return self.message.tenant
