"""Crash-loop quarantine: a message whose processing killed the worker must not kill the next one.

A message that kills its worker (the OOM killer's SIGKILL, a segfault in a decoder, an abort in
a native library) leaves no error behind to dead-letter: the process is gone, the message is
delivered again, and it kills the next worker too. `Quarantine` stands between `ParseArrival`
and `FetchAudio` and keeps, in the verdict store, a durable count of attempts *in progress* per
(tenant, idempotency key):

* before the risky work (fetch, decode, score) it records the attempt (`begin_attempt`);
* once the message is done (its verdict, dead letter or retry record acknowledged) the
  counter is cleared, and a graceful stop (the SIGTERM drain deadline, a revoke, a fatal
  error) takes back the attempts it abandons (`undo_attempt`): only a crash leaves a count.

So a count found when a message comes in is the number of crashes it was part of. A crash kills
every message in flight, guilty or not, so one crash blames nobody: a message with earlier
crashed attempts (a *suspect*) runs in isolation, alone in the risky part of the pipeline, after
everything before it is done and before anything behind it starts (Lambda's bisection, down to
a batch of one). An innocent suspect finishes; the guilty one crashes alone, and only its own
count goes up. A message that was in progress `after` times (default 2, `store.quarantine_after`)
is dead-lettered as ``crashed_worker`` (category poison, with the attempt count) without being
processed again, and the worker goes on.

This step must never let a suspect run beside other work, and never count an attempt that did
not start: a message waiting behind a suspect has no attempt recorded.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Set
from dataclasses import replace

from consumers.ports import AttemptCounter, InFlightLedger, StoreCall, call_directly
from consumers.steps import Step
from consumers.transport import AckToken
from consumers.work import Work
from services.errors import PoisonMessage, RetryableError

__all__ = ["CRASHED_WORKER", "Quarantine"]

log = logging.getLogger("audioguard.pipeline")

#: the dead-letter reason of a message that was in progress `after` times when its worker died
CRASHED_WORKER = "crashed_worker"
#: counters of finished messages waiting to be cleared while the store is unreachable
_MAX_UNCLEARED = 10_000

Pair = tuple[str, str]


class Quarantine(Step):
    """Counts attempts in progress, isolates suspects, dead-letters crash loops (module docstring).

    Work leaves in arrival order; everything behind a suspect waits until the suspect is done.
    The wait is bounded by the admission limits like every queue behind `Admit`. The pipeline
    reports each finished message with `finished` and each abandoned one with `abandon`.
    """

    def __init__(
        self,
        next_step: Step,
        *,
        dead_letter: Step,
        counter: AttemptCounter | None,
        in_flight: InFlightLedger,
        after: int = 2,
        store_call: StoreCall = call_directly,
    ) -> None:
        self._next = next_step
        self._dead_letter = dead_letter
        self._counter = counter
        self._in_flight = in_flight
        self._after = after
        self._store_call = store_call
        self._queue: deque[Work] = deque()
        #: attempts begun and not yet done, by ack token
        self._active: dict[AckToken, Pair] = {}
        #: the suspect running alone, if any
        self._isolated: AckToken | None = None
        #: the head of the queue is a suspect waiting for the active work to finish
        self._head_waits = False
        #: done messages whose counters are still to be cleared (an ordered set)
        self._uncleared: dict[Pair, None] = {}
        self.isolated = 0
        self.quarantined = 0

    @property
    def enabled(self) -> bool:
        """Off without a counter or with `after` = 0: work then passes straight through."""
        return self._counter is not None and self._after > 0

    def submit(self, work: Work) -> None:
        if not self.enabled:
            self._next.submit(work)
            return
        self._queue.append(work)
        self._release()

    def poll(self) -> None:
        self._clear()
        self._release()

    def pending(self) -> int:
        return len(self._queue)

    def _release(self) -> None:
        while self._queue and self._isolated is None:
            if self._head_waits and self._active:
                return
            if not self._start(self._queue[0]):
                return

    def _start(self, work: Work) -> bool:
        """Start the head of the queue, quarantine it, or (False) leave it waiting."""
        counter = self._counter
        assert work.arrival is not None and counter is not None
        pair = (work.tenant, work.arrival.idempotency_key)
        if pair in self._uncleared:
            self._clear()  # a done message's counter must not swallow this new attempt
        try:
            count = self._store_call(lambda: counter.begin_attempt(*pair))
        except RetryableError as error:
            # the store is down past the in-place retries: a retry tier (Kafka) or the DLQ
            self._pop()
            self._dead_letter.submit(replace(work, error=error))
            return True
        crashed = count - 1
        if crashed >= self._after:
            self._pop()
            self._active[work.message.token] = pair
            self.quarantined += 1
            log.error(
                "quarantined: this message was in progress each time a worker died",
                extra={"tenant": work.tenant, "idempotency_key": pair[1], "crashed_attempts": crashed},
            )
            poison = PoisonMessage(
                CRASHED_WORKER,
                f"in progress when a worker died {crashed} time(s) (a crash, an OOM kill, a SIGKILL); "
                "not processed again",
            )
            message = replace(work.message, delivery_attempt=max(work.message.delivery_attempt, count))
            self._dead_letter.submit(replace(work, message=message, error=poison))
            return True
        if crashed and self._active:
            # a suspect, but other work is in flight: not started after all, so not counted
            self._take_back(pair)
            self._head_waits = True
            return False
        self._pop()
        self._active[work.message.token] = pair
        if crashed:
            self._isolated = work.message.token
            self.isolated += 1
            log.warning(
                "running a suspect alone: it was in progress when a worker died",
                extra={"tenant": work.tenant, "idempotency_key": pair[1], "crashed_attempts": crashed},
            )
        self._next.submit(work)
        return True

    def _pop(self) -> None:
        self._queue.popleft()
        self._head_waits = False

    def finished(self, work: Work) -> None:
        """`work` left the pipeline (committed): its counter goes, and what waited on it may run."""
        pair = self._active.pop(work.message.token, None)
        if pair is None:
            return  # never counted here (a parse dead letter, a duplicate) or quarantine is off
        if work.message.token == self._isolated:
            self._isolated = None
        if len(self._uncleared) < _MAX_UNCLEARED:
            self._uncleared[pair] = None

    def _clear(self) -> None:
        counter = self._counter
        if not self._uncleared or counter is None:
            return
        items = list(self._uncleared)
        try:
            self._store_call(lambda: counter.clear_attempts(items))
        except RetryableError as error:
            # kept for the next turn; a counter left behind only makes a replay run alone
            log.warning("could not clear attempt counters", extra={"error": str(error), "count": len(items)})
            return
        for pair in items:
            self._uncleared.pop(pair, None)

    def abandon(self, tokens: Set[AckToken]) -> None:
        """A revoke gave up on these messages without a crash: drop the waiting ones (their
        admission is released) and take back the attempts of the started ones."""
        for work in [w for w in self._queue if w.message.token in tokens]:
            self._queue.remove(work)
            self._in_flight.release(work.tenant, 0.0)
        if not self._queue:
            self._head_waits = False
        self._undo([token for token in self._active if token in tokens])

    def close(self) -> None:
        """A graceful stop: what is still in progress was abandoned, not crashed."""
        self._undo(list(self._active))
        self._queue.clear()
        self._head_waits = False
        self._clear()

    def _undo(self, tokens: list[AckToken]) -> None:
        for token in tokens:
            pair = self._active.pop(token)
            if token == self._isolated:
                self._isolated = None
            self._take_back(pair)

    def _take_back(self, pair: Pair) -> None:
        counter = self._counter
        if counter is None:
            return
        try:
            self._store_call(lambda: counter.undo_attempt(*pair))
        except RetryableError as error:
            # left counted: at worst the message runs alone next time, or is quarantined one crash early
            log.warning(
                "could not take back an attempt", extra={"error": str(error), "idempotency_key": pair[1]}
            )
