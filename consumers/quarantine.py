"""Crash-loop quarantine: a message whose processing killed the worker must not kill the next one.

A message that kills its worker (the OOM killer's SIGKILL, a segfault in a decoder, an abort in
a native library) leaves no error behind to dead-letter: the process is gone, the message is
delivered again, and it kills the next worker too. `Quarantine` stands between `ParseArrival`
and `FetchAudio` and keeps, in the verdict store, a durable count of attempts *in progress* per
(tenant, idempotency key):

* before the risky work (fetch, decode, score) it records the attempt: `claim_attempts` for
  everything that arrived in one loop turn, in one round trip (a message without earlier
  attempts is counted by it; a suspect is counted by `begin_attempts` when its turn comes);
* once the message is done (its verdict, dead letter or retry record acknowledged) the
  counter is cleared, and a graceful stop (the SIGTERM drain deadline, a revoke, a fatal
  error) takes back the attempts it abandons (`undo_attempts`): only a crash leaves a count.

So a count found when a message comes in is the number of crashes it was part of. A crash kills
every message in flight, guilty or not, so one crash blames nobody: a message with earlier
crashed attempts (a *suspect*) runs in isolation, alone in the risky part of the pipeline, after
everything before it is done and before anything behind it starts (Lambda's bisection, down to
a batch of one). An innocent suspect finishes; the guilty one crashes alone, and only its own
count goes up. A message that was in progress `after` times (default 2, `store.quarantine_after`)
is dead-lettered as ``crashed_worker`` (category poison, with the attempt count) without being
processed again, and the worker goes on.

This step must never let a suspect run beside other work, and never count an attempt that did
not start: a message waiting behind a suspect has no attempt recorded (one claimed in the same
turn as the suspect was found is taken back before anything new starts).
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
from services.errors import AudioguardError, PoisonMessage, RetryableError

__all__ = ["CRASHED_WORKER", "Quarantine"]

log = logging.getLogger("audioguard.pipeline")

#: the dead-letter reason of a message that was in progress `after` times when its worker died
CRASHED_WORKER = "crashed_worker"
#: counters of finished messages waiting to be cleared while the store is unreachable
_MAX_UNCLEARED = 10_000

Pair = tuple[str, str]


class Quarantine(Step):
    """Counts attempts in progress, isolates suspects, dead-letters crash loops (module docstring).

    Work is taken in `submit` and released in `poll`, once per loop turn, with one store round
    trip for everything that arrived in that turn (`claim_attempts`) and one for everything that
    finished (`clear_attempts`). Work leaves in arrival order; everything behind a suspect waits
    until the suspect is done, bounded by the admission limits like every queue behind `Admit`.
    The pipeline reports each finished message with `finished` and each abandoned one with
    `abandon`.
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
        #: earlier attempts of queued work, once the store was asked (0: this one is counted)
        self._earlier: dict[AckToken, int] = {}
        #: attempts counted and not yet done, by ack token
        self._active: dict[AckToken, Pair] = {}
        #: the suspect running alone, if any
        self._isolated: AckToken | None = None
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
        assert work.arrival is not None
        self._queue.append(work)

    def poll(self) -> None:
        if self.enabled:
            self._clear()
            self._release()

    def pending(self) -> int:
        return len(self._queue)

    def _release(self) -> None:
        counter = self._counter
        if not self._queue or self._isolated is not None or counter is None:
            return
        asked: list[Work] = []
        for work in self._queue:
            earlier = self._earlier.get(work.message.token)
            if earlier is None:
                asked.append(work)
            elif 0 < earlier < self._after:
                break  # a known suspect: what is behind it waits, and is not asked yet
        if asked:
            try:
                counts = self._store_call(lambda: counter.claim_attempts([_pair(w) for w in asked]))
            except RetryableError as error:
                # the store is down past the in-place retries: a retry tier (Kafka) or the DLQ
                for work in asked:
                    self._queue.remove(work)
                    self._dead_letter.submit(replace(work, error=error))
                return
            for work, count in zip(asked, counts, strict=True):
                self._earlier[work.message.token] = count
        starting: list[Work] = []
        while self._queue and self._queue[0].message.token in self._earlier:
            earlier = self._earlier[self._queue[0].message.token]
            if earlier == 0:  # counted by the claim: it starts now, beside the others
                work = self._take()
                self._active[work.message.token] = _pair(work)
                starting.append(work)
            elif earlier >= self._after:
                self._quarantine(self._take(), earlier)
            elif self._active or starting:
                break  # a suspect waits until nothing else is in flight
            elif self._run_alone(self._take(), earlier, starting):
                break  # and nothing behind it starts until it is done
        # claimed this turn but stuck behind a suspect: not started, so not counted
        waiting = [w for w in self._queue if self._earlier.get(w.message.token) == 0]
        for work in waiting:
            del self._earlier[work.message.token]
        self._take_back([_pair(w) for w in waiting])
        for work in starting:
            self._next.submit(work)

    def _take(self) -> Work:
        work = self._queue.popleft()
        del self._earlier[work.message.token]
        return work

    def _run_alone(self, work: Work, earlier: int, starting: list[Work]) -> bool:
        """Count the suspect's attempt and start it alone; False if it did not start."""
        counter = self._counter
        assert counter is not None
        try:
            [count] = self._store_call(lambda: counter.begin_attempts([_pair(work)]))
        except RetryableError as error:
            self._dead_letter.submit(replace(work, error=error))
            return False
        if count - 1 >= self._after:  # another worker's attempts came in meanwhile
            self._quarantine(work, count - 1)
            return False
        self._active[work.message.token] = _pair(work)
        self._isolated = work.message.token
        self.isolated += 1
        log.warning(
            "running a suspect alone: it was in progress when a worker died",
            extra={"tenant": work.tenant, "idempotency_key": _pair(work)[1], "crashed_attempts": earlier},
        )
        starting.append(work)
        return True

    def _quarantine(self, work: Work, crashed: int) -> None:
        # tracked like started work, so its counter is cleared once the dead letter is acked
        self._active[work.message.token] = _pair(work)
        self.quarantined += 1
        log.error(
            "quarantined: this message was in progress each time a worker died",
            extra={"tenant": work.tenant, "idempotency_key": _pair(work)[1], "crashed_attempts": crashed},
        )
        poison = PoisonMessage(
            CRASHED_WORKER,
            f"in progress when a worker died {crashed} time(s) (a crash, an OOM kill, a SIGKILL); "
            "not processed again",
        )
        # the envelope's attempt is this delivery: the crashed ones, plus this one
        attempt = max(work.message.delivery_attempt, crashed + 1)
        self._dead_letter.submit(
            replace(work, message=replace(work.message, delivery_attempt=attempt), error=poison)
        )

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
            if self._earlier.pop(work.message.token, None) == 0:
                self._take_back([_pair(work)])
            self._in_flight.release(work.tenant, 0.0)
        self._undo([token for token in self._active if token in tokens])

    def close(self) -> None:
        """A graceful stop: what is still in progress was abandoned, not crashed. Never raises:
        a store that fails now (it may be why the worker stops) leaves the counts as they are."""
        claimed = [_pair(w) for w in self._queue if self._earlier.get(w.message.token) == 0]
        self._queue.clear()
        self._earlier.clear()
        try:
            self._take_back(claimed)
            self._undo(list(self._active))
            self._clear()
        except AudioguardError as error:
            log.warning("could not take back attempts on stop", extra={"error": str(error)})

    def _undo(self, tokens: list[AckToken]) -> None:
        pairs = [self._active.pop(token) for token in tokens]
        if self._isolated in tokens:
            self._isolated = None
        self._take_back(pairs)

    def _take_back(self, pairs: list[Pair]) -> None:
        counter = self._counter
        if not pairs or counter is None:
            return
        try:
            self._store_call(lambda: counter.undo_attempts(pairs))
        except RetryableError as error:
            # left counted: at worst a message runs alone next time, or is quarantined a crash early
            log.warning("could not take back attempts", extra={"error": str(error), "count": len(pairs)})


def _pair(work: Work) -> Pair:
    assert work.arrival is not None
    return (work.tenant, work.arrival.idempotency_key)
