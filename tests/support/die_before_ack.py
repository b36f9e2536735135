"""`python -m tests.support.die_before_ack worker --transport X ...`: the real `audioguard
worker` (same CLI, same settings, same pipeline), except that the first time it is about to
ack anything it SIGKILLs itself.

At that moment the verdicts of the arrivals it is acking are stored and published, and
nothing is acked: exactly the crash the conformance suite's scenario 3 needs, on every run.
Killing it from the test when the first verdict shows up in the store is a race with the
worker's own ack (about 50 ms after the store): on a loaded machine the test saw the store
late, after the acks, and the successor had no stored arrival to answer (issue 22).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import consumers.transports.registry as registry
from consumers.transport import AckToken
from services.cli import main

_open_transport = registry.open_transport


def _die(tokens: Sequence[AckToken]) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _open_dying(settings: Any, **options: Any) -> Any:
    source, sink = _open_transport(settings, **options)
    source.ack = _die  # type: ignore[method-assign]
    return source, sink


if __name__ == "__main__":
    registry.open_transport = _open_dying
    sys.exit(main(sys.argv[1:]))
