"""Dead letters: the envelope written with every dead-lettered arrival (`dlq.envelope`) and
the circuit breaker that stops a worker instead of dead-lettering all traffic
(`dlq.breaker`). The inspect / replay tooling lives beside them.

This package must never import a broker SDK: it builds records, adapters publish them.
"""

from __future__ import annotations

from dlq.breaker import DlqBreaker
from dlq.envelope import (
    HEADER_PREFIX,
    REPLAY_COUNT_HEADER,
    REPLAY_ID_HEADER,
    build_dead_letter,
    dead_letter_from_record,
    dead_letter_record,
    replay_headers,
    stack_digest,
)

__all__ = [
    "HEADER_PREFIX",
    "REPLAY_COUNT_HEADER",
    "REPLAY_ID_HEADER",
    "DlqBreaker",
    "build_dead_letter",
    "dead_letter_from_record",
    "dead_letter_record",
    "replay_headers",
    "stack_digest",
]
