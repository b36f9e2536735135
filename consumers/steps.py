"""The pipeline steps, each a small object with `submit / poll / join / close` (Arroyo's shape).

    Admit ─► ParseArrival ─► Quarantine ─► FetchAudio ─► ScoreBatches ─► BuildVerdict ─► Publish ─► Commit
               │   └─ duplicate: stored verdict ──────────────────────────────────────────►┘  (or to Commit)
               └──────────┴───────────┴──────────────┴───────────────┴──► DeadLetter ─► Publish

(`Quarantine`, the crash-loop guard, lives in `consumers.quarantine`.)

Every `Work` item carries its `Message`, so the ack token travels with the payload to the
last step; acking happens only in `Commit`, after the Sink confirmed the verdict or the
dead letter. `Admit` is the one step that refuses work (`MessageRejected`): it bounds the
events and seconds of audio in flight per tenant and in total, which bounds every queue
behind it. The steps after it never reject; a step whose successor is momentarily busy
keeps the item in a small outbox (bounded by the same admission limits).

Steps are broker-neutral: they see `Source`, `Sink`, `Message` and `OutRecord` only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import ValidationError

from consumers.batching import MicroBatcher
from consumers.ports import Breaker, Detector, InFlightLedger, StoreCall, VerdictStore, call_directly
from consumers.transport import AckToken, Message, MessageRejected, OutRecord, Sink, Source
from consumers.work import Work

if TYPE_CHECKING:
    from services.detector import Decision
from schemas import SCHEMA_VERSION, AudioArrival, ModelInfo, Timings, Verdict, WindowSummary
from services.errors import AudioguardError, FatalError, PoisonMessage, ResourceExhausted, RetryableError

__all__ = [
    "BuildVerdict",
    "Commit",
    "DeadLetter",
    "FetchAudio",
    "Loaded",
    "ParseArrival",
    "Publish",
    "ScoreBatches",
    "Step",
    "Work",
]

log = logging.getLogger("audioguard.pipeline")

VERDICT_HEADERS = ("ag-idempotency-key", "ag-model-version", "ag-schema-version")


class Step(ABC):
    @abstractmethod
    def submit(self, work: Work) -> None:
        """Take `work`. Only `Admit` may raise `MessageRejected`."""

    def poll(self) -> None:  # noqa: B027 - optional for steps that finish inside submit
        """Make progress without blocking: forward finished work to the next step."""

    def join(self, timeout: float | None = None) -> None:  # noqa: B027
        """Finish what was submitted, within `timeout` seconds."""

    def close(self) -> None:  # noqa: B027
        """Release threads and resources."""

    def pending(self) -> int:
        """Items held by this step (for draining and tests)."""
        return 0


class _Forwarding(Step):
    """A step that hands its finished work to the next step.

    The next step never refuses (only `Admit`, the first step, raises MessageRejected), so
    there is no outbox to hold work in.
    """

    def __init__(self, next_step: Step) -> None:
        self._next = next_step

    def _forward(self, work: Work) -> None:
        self._next.submit(work)


# -- parse --------------------------------------------------------------------------------
class ParseArrival(_Forwarding):
    """Bytes -> AudioArrival; enforces size, schema, major version, the topic's tenant, the
    clock skew of submitted_at and (`check_uri`) that the audio URI is the tenant's.

    All of that before the verdict store is asked, so a repeated key skips no check. A known
    key is answered from the store, never scored again, unless the arrival's content differs
    from what the key was first used for: that is an `idempotency_conflict` dead letter.
    """

    def __init__(
        self,
        next_step: Step,
        *,
        dead_letter: Step,
        publish: Step,
        commit: Step,
        store: VerdictStore,
        max_event_bytes: int,
        on_duplicate: str = "republish",
        on_parsed: Callable[[Work], None] | None = None,
        store_call: StoreCall = call_directly,
        check_uri: Callable[[str, str], object] | None = None,
        max_clock_skew_seconds: float | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(next_step)
        self._check_uri = check_uri
        self._max_skew = max_clock_skew_seconds
        self._wall_clock = wall_clock
        self._dead_letter = dead_letter
        self._publish = publish
        self._commit = commit
        self._store = store
        # wraps each store call: in-place retries of a brief store hiccup (services.retry)
        self._store_call = store_call
        self._max_event_bytes = max_event_bytes
        self._on_duplicate = on_duplicate
        self._on_parsed = on_parsed

    def submit(self, work: Work) -> None:
        # Whatever a message contains, its failure is its own outcome, never the worker's.
        # Only the routing decision is guarded: a later step's failure is not this message's.
        try:
            step, work = self._route(work)
        except FatalError:
            raise
        except Exception as error:  # noqa: BLE001 - internal_error dead letter, with its digest
            step, work = self._dead_letter, replace(work, error=error)
        step.submit(work)

    def _route(self, work: Work) -> tuple[Step, Work]:
        try:
            arrival = parse_arrival(
                work.message, self._max_event_bytes, max_skew_seconds=self._max_skew, now=self._wall_clock()
            )
        except PoisonMessage as error:
            return self._dead_letter, replace(work, error=error)
        work = replace(work, arrival=arrival)
        if self._check_uri is not None:
            try:
                self._check_uri(arrival.audio_uri, work.tenant)
            except PoisonMessage as error:
                return self._dead_letter, replace(work, error=error)
        if self._on_parsed is not None:
            self._on_parsed(work)
        try:
            stored = self._store_call(lambda: self._store.get(work.tenant, arrival.idempotency_key))
        except RetryableError as error:
            # the store is down past the in-place retries: a retry tier (Kafka) or the DLQ
            return self._dead_letter, replace(work, error=error)
        if stored is not None:
            conflict = idempotency_conflict(arrival, stored)
            if conflict is not None:
                return self._dead_letter, replace(work, error=conflict)
            if self._on_duplicate == "republish":
                record = verdict_record(work.tenant, stored)
                return self._publish, replace(work, record=record, outcome="duplicate")
            return self._commit, replace(work, outcome="duplicate")
        return self._next, work


# Deep enough for any honest arrival (attributes are free-form but shallow), far below the
# interpreter's recursion limit, so json.loads never recurses into a hostile document.
MAX_EVENT_DEPTH = 32
_JSON_SPECIAL = re.compile(rb'["\\\[\]{}]')
_OPENERS = frozenset(b"[{")


def nesting_depth(raw: bytes, stop_above: int | None = None) -> int:
    """The deepest bracket nesting of `raw`, brackets inside JSON strings not counted.

    One linear pass over the bytes that matter (quotes, backslashes, brackets), no
    recursion, so it is safe on any input; it stops once the depth passes `stop_above`.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _JSON_SPECIAL.finditer(raw):
        at = match.start()
        char = raw[at]
        if in_string:
            if at == escaped_at:
                continue
            if char == 0x5C:  # backslash: the next byte is escaped, whatever it is
                escaped_at = at + 1
            elif char == 0x22:
                in_string = False
            continue
        if char == 0x22:
            in_string = True
        elif char in _OPENERS:
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        elif char != 0x5C:
            depth -= 1
    return deepest


def parse_arrival(
    message: Message,
    max_event_bytes: int,
    max_depth: int = MAX_EVENT_DEPTH,
    *,
    max_skew_seconds: float | None = None,
    now: datetime | None = None,
) -> AudioArrival:
    """Bytes -> AudioArrival, or a PoisonMessage with a stable reason; never another error.

    Size and nesting are bounded before json.loads does any (recursive) work. With
    `max_skew_seconds`, a submitted_at further than that ahead of `now` is refused.
    """
    if len(message.value) > max_event_bytes:
        raise PoisonMessage(
            "oversize_event", f"event of {len(message.value)} bytes exceeds {max_event_bytes}"
        )
    depth = nesting_depth(message.value, stop_above=max_depth)
    if depth > max_depth:
        raise PoisonMessage("too_deep", f"event nests more than {max_depth} levels deep")
    if message.rejection is not None:
        raise PoisonMessage(*message.rejection)
    try:
        document = json.loads(message.value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage("malformed_json", f"event is not JSON: {exc}") from exc
    except RecursionError as exc:  # the depth scan should make this unreachable
        raise PoisonMessage("too_deep", "event nests too deep to parse") from exc
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise PoisonMessage("malformed_json", f"event is not parseable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise PoisonMessage("schema", "event must be a JSON object")
    try:
        arrival = AudioArrival.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        reason = (
            "unknown_schema_version" if where == "schema_version" and "major" in first["msg"] else "schema"
        )
        raise PoisonMessage(reason, f"{where}: {first['msg']} ({exc.error_count()} error(s))") from exc
    if arrival.tenant_id != message.tenant:
        raise PoisonMessage(
            "tenant_mismatch",
            f"event claims tenant {arrival.tenant_id!r} but arrived on {message.tenant!r}'s topic",
        )
    if max_skew_seconds is not None:
        ahead = (arrival.submitted_at - (now or datetime.now(UTC))).total_seconds()
        if ahead > max_skew_seconds:
            raise PoisonMessage(
                "submitted_in_future",
                f"submitted_at is {ahead:.0f} s ahead of the worker's clock (at most {max_skew_seconds:g} s)",
            )
    return arrival


#: the arrival fields a stored verdict remembers (schemas.Verdict) and a repeat must match
CONFLICT_FIELDS = ("content_id", "audio_uri", "sha256")


def idempotency_conflict(arrival: AudioArrival, stored_json: bytes) -> PoisonMessage | None:
    """The dead letter for an arrival that reuses a stored verdict's key for other content.

    A field counts when both sides have it: an arrival without a sha256, or a verdict stored
    before verdicts recorded audio_uri and sha256, is not a conflict on that field.
    """
    stored = json.loads(stored_json)
    differ = [
        name
        for name in CONFLICT_FIELDS
        if getattr(arrival, name) is not None
        and stored.get(name) is not None
        and stored[name] != getattr(arrival, name)
    ]
    if not differ:
        return None
    return PoisonMessage(
        "idempotency_conflict",
        f"the idempotency key was first used for other content (differs: {', '.join(differ)})",
    )


def verdict_record(tenant: str, verdict_json: bytes) -> OutRecord:
    """The verdict topic's record of a stored verdict (any worker's, any version)."""
    verdict = json.loads(verdict_json)
    key = verdict["idempotency_key"]
    return _verdict_record(
        tenant,
        verdict_json,
        key=key,
        model_version=str(verdict["model"]["version"]),
        schema_version=str(verdict.get("schema_version", SCHEMA_VERSION)),
        ordering_key=str(verdict.get("content_id", key)),
    )


def _verdict_record(
    tenant: str, verdict_json: bytes, *, key: str, model_version: str, schema_version: str, ordering_key: str
) -> OutRecord:
    return OutRecord(
        tenant=tenant,
        destination="verdicts",
        key=key.encode(),
        value=verdict_json,
        headers=(
            ("ag-idempotency-key", key.encode()),
            ("ag-model-version", model_version.encode()),
            ("ag-schema-version", schema_version.encode()),
        ),
        ordering_key=ordering_key,
    )


# -- fetch and decode ---------------------------------------------------------------------
class Loaded(NamedTuple):
    """What a fetch thread hands back: the detector's windows, the audio's length and the
    per-window speech fractions (None when the scorer has no speech check)."""

    windows: np.ndarray
    duration_seconds: float
    speech: np.ndarray | None = None


class FetchAudio(_Forwarding):
    """Fetches and decodes audio on a thread pool, then cuts it into the detector's windows."""

    def __init__(
        self,
        next_step: Step,
        *,
        dead_letter: Step,
        executor: Executor,
        load: Callable[[AudioArrival, str], Loaded],
        in_flight: InFlightLedger,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(next_step)
        self._dead_letter = dead_letter
        self._executor = executor
        self._load = load
        self._in_flight = in_flight
        # called on the fetch thread when a load finishes: wakes a loop waiting for work
        self._on_ready = on_ready
        self._running: set[Future[Loaded]] = set()
        self._owner: dict[Future[Loaded], Work] = {}

    def submit(self, work: Work) -> None:
        assert work.arrival is not None
        future = self._executor.submit(self._load, work.arrival, work.tenant)
        if self._on_ready is not None:
            future.add_done_callback(self._finished)
        self._running.add(future)
        self._owner[future] = work

    def _finished(self, _future: Future[Loaded]) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def poll(self) -> None:
        done = [f for f in self._running if f.done()]
        for future in done:
            self._running.discard(future)
            work = self._owner.pop(future)
            if future.cancelled():
                # abandoned (revoked partition / shutdown): never a dead letter; redelivered later
                self._in_flight.release(work.tenant, 0.0)
                continue
            try:
                loaded = future.result()
            except Exception as error:  # noqa: BLE001 - every failure becomes a dead letter
                self._dead_letter.submit(replace(work, error=error))
                continue
            self._in_flight.adjust(work.tenant, loaded.duration_seconds)
            self._forward(
                replace(
                    work,
                    windows=loaded.windows,
                    duration_seconds=loaded.duration_seconds,
                    speech=loaded.speech,
                )
            )

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.005)
            self.poll()

    def pending(self) -> int:
        return len(self._running)

    def abandon(self, tokens: set[AckToken]) -> None:
        for future, work in list(self._owner.items()):
            if work.message.token in tokens:
                future.cancel()


# -- batch and score ----------------------------------------------------------------------
def score_items(
    score: Callable[[np.ndarray], np.ndarray], items: list[np.ndarray]
) -> list[np.ndarray | Exception]:
    """Score a batch of uploads' windows; errors per item, never a whole-batch failure.

    A failing batch (CUDA out-of-memory or anything else) is split in halves and retried,
    so one bad item, or a batch too large for the device, never blames its neighbours.
    """
    if not items:
        return []
    try:
        scores = score(np.concatenate(items, axis=0))
        total = sum(len(x) for x in items)
        if len(scores) != total:
            raise RetryableError("scorer_length", f"scorer returned {len(scores)} scores for {total} windows")
        out: list[np.ndarray | Exception] = []
        start = 0
        for x in items:
            out.append(np.asarray(scores[start : start + len(x)], dtype=np.float32))
            start += len(x)
        return out
    except Exception as error:  # noqa: BLE001
        if len(items) == 1:
            if isinstance(error, AudioguardError):
                return [error]
            return [RetryableError("scoring_failed", f"{type(error).__name__}: {error}")]
        if not isinstance(error, ResourceExhausted):
            log.warning("batch scoring failed; splitting", extra={"error": str(error), "items": len(items)})
        half = len(items) // 2
        return score_items(score, items[:half]) + score_items(score, items[half:])


#: a finished batch: per-item scores or errors, seconds, and the detector that scored it
_Scored = tuple[list[np.ndarray | Exception], float, Any]


class ScoreBatches(_Forwarding):
    """Micro-batches windows fairly across tenants and scores one batch at a time on the
    scorer thread, while the next batch fills."""

    def __init__(
        self,
        next_step: Step,
        *,
        dead_letter: Step,
        batcher: MicroBatcher[Work],
        executor: Executor,
        score: Callable[[np.ndarray], np.ndarray],
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[list[Work], float], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        model: Callable[[], Detector] | None = None,
        on_scored: Callable[[list[Work], float], None] | None = None,
    ) -> None:
        super().__init__(next_step)
        #: sees each batch's successfully scored uploads (shadow scoring: consumers.shadow)
        self._on_scored = on_scored
        #: with a model slot (consumers.models), each batch is scored by the detector serving when
        #: it starts, and its items carry that detector (`scored_by`) to the verdict
        self._model = model
        self._dead_letter = dead_letter
        # called on the scorer thread when a batch finishes: wakes a loop waiting for work
        self._on_ready = on_ready
        self._batcher = batcher
        self._executor = executor
        self._score = score
        self._window_seconds = window_seconds
        self._clock = clock
        self._on_batch = on_batch
        # the running batch and at most one full batch queued behind it on the scorer thread:
        # the model never waits for the loop's next turn (measured: +20-40 % on 2 CPU cores)
        self._running: deque[tuple[Future[_Scored], list[Work]]] = deque()

    def submit(self, work: Work) -> None:
        assert work.windows is not None and work.arrival is not None
        self._batcher.add(
            work.tenant,
            work,
            windows=len(work.windows),
            seconds=len(work.windows) * self._window_seconds,
            priority=work.arrival.priority,
        )

    def _finished(self, _future: Future[_Scored]) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def _run(self, batch: list[Work]) -> _Scored:
        started = time.perf_counter()
        # one detector for the whole batch, read once: a hot swap lands between batches
        detector = self._model() if self._model is not None else None
        score = detector.score_windows if detector is not None else self._score
        # submit() refuses work without windows, so every item of a batch has them
        results = score_items(score, [w.windows for w in batch if w.windows is not None])
        return results, time.perf_counter() - started, detector

    def poll(self) -> None:
        while self._running and self._running[0][0].done():
            future, batch = self._running.popleft()
            results, seconds, detector = future.result()
            if self._on_batch is not None:
                self._on_batch(batch, seconds)
            scored: list[Work] = []
            for work, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    self._dead_letter.submit(replace(work, error=result))
                else:
                    done = replace(work, scores=result, scoring_seconds=seconds, scored_by=detector)
                    scored.append(done)
                    self._forward(done)
            if self._on_scored is not None and scored:
                self._on_scored(scored, seconds)
        # continuous batching: an idle scorer takes whatever is queued at once (waiting for the
        # deadline there only adds latency); behind a running batch only a full one queues, so a
        # partial batch keeps filling while the scorer is busy
        while len(self._batcher) and (
            not self._running
            or (
                len(self._running) == 1
                and self._batcher.ready()
                and self._batcher.queued_windows >= self._batcher.policy.max_windows
            )
        ):
            batch = self._batcher.take()
            now = self._clock()
            batch = [replace(w, scoring_started=now) for w in batch]
            future = self._executor.submit(self._run, batch)
            if self._on_ready is not None:
                future.add_done_callback(self._finished)
            self._running.append((future, batch))

    def flush_deadline(self) -> float | None:
        return self._batcher.deadline()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (self._running or len(self._batcher)) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.002)
            self.poll()

    def pending(self) -> int:
        running = sum(len(batch) for _, batch in self._running)
        return len(self._batcher) + running


# -- verdict ------------------------------------------------------------------------------
class BuildVerdict(_Forwarding):
    """Window scores -> one Verdict per upload, stored first-writer-wins in the verdict store.

    Storing before publishing means a crash between the two re-publishes the *stored*
    verdict on re-delivery: the same arrival always yields the same verdict.
    """

    def __init__(
        self,
        next_step: Step,
        *,
        decide: Callable[[np.ndarray, np.ndarray | None, float | None], Decision],
        model: ModelInfo,
        store: VerdictStore,
        clock: Callable[[], float] = time.monotonic,
        dead_letter: Step | None = None,
        store_call: StoreCall = call_directly,
    ) -> None:
        super().__init__(next_step)
        self._decide = decide
        self._model = model
        self._store = store
        self._clock = clock
        self._dead_letter = dead_letter
        self._store_call = store_call

    def submit(self, work: Work) -> None:
        try:
            step, work = self._route(work)
        except FatalError:
            raise
        except Exception as error:
            if self._dead_letter is None:
                raise
            # a verdict that cannot be built is this message's dead letter, not the worker's exit
            step, work = self._dead_letter, replace(work, error=error)
        step.submit(work)

    def _model_of(self, detector: Detector) -> ModelInfo:
        meta = detector.meta
        known = self._model
        if (meta.name, meta.version, meta.checksum) != (known.name, known.version, known.checksum):
            self._model = ModelInfo(name=meta.name, version=meta.version, checksum=meta.checksum)
        return self._model

    def _route(self, work: Work) -> tuple[Step, Work]:
        assert work.arrival is not None and work.scores is not None
        detector = work.scored_by
        decide = detector.decide if detector is not None else self._decide
        decision = decide(work.scores, work.speech, work.duration_seconds)
        model = self._model if detector is None else self._model_of(detector)
        now = datetime.now(UTC)
        arrival = work.arrival
        verdict = Verdict(
            idempotency_key=arrival.idempotency_key,
            tenant_id=work.tenant,
            content_id=arrival.content_id,
            event_id=arrival.event_id,
            audio_uri=arrival.audio_uri,
            sha256=arrival.sha256,
            label=decision.label,
            score=float(decision.score),
            threshold=float(decision.threshold),
            windows=WindowSummary(
                count=decision.window_count,
                mean=decision.mean,
                minimum=decision.minimum,
                maximum=decision.maximum,
                fraction_over_threshold=decision.fraction_over_threshold,
            ),
            duration_seconds=work.duration_seconds,
            model=model,
            timings=Timings(
                queued_seconds=max(0.0, (work.scoring_started or work.admitted_at) - work.admitted_at),
                scoring_seconds=work.scoring_seconds,
                end_to_end_seconds=(now - arrival.submitted_at).total_seconds(),
            ),
            processed_at=now,
            attempt=work.message.delivery_attempt,
            **decision.verdict_fields(),
        )
        ours = verdict.model_dump_json().encode()
        try:
            stored = self._store_call(
                lambda: self._store.put_if_absent(work.tenant, arrival.idempotency_key, ours)
            )
        except RetryableError as error:
            if self._dead_letter is None:
                raise
            return self._dead_letter, replace(work, error=error)
        if stored == ours:
            # ours won (the usual case): nothing to compare, and no need to parse back the JSON
            # just written for its headers (two json.loads per upload on the loop thread)
            record = _verdict_record(
                work.tenant,
                stored,
                key=verdict.idempotency_key,
                model_version=str(verdict.model.version),
                schema_version=str(verdict.schema_version),
                ordering_key=verdict.content_id,
            )
            return self._next, replace(work, record=record, outcome="verdict", label=decision.label)
        # another worker stored first for the same key (both missed in ParseArrival): fine for
        # the same content, a conflict for other content
        conflict = idempotency_conflict(arrival, stored)
        if conflict is not None and self._dead_letter is not None:
            return self._dead_letter, replace(work, error=conflict)
        record = verdict_record(work.tenant, stored)
        return self._next, replace(work, record=record, outcome="verdict", label=decision.label)


# -- dead letters -------------------------------------------------------------------------
class DeadLetter(_Forwarding):
    """Turns a failed item into its dead-letter record; the circuit breaker watches the rate.

    With `retry` set (Kafka retry topics), a `RetryableError` first goes to the next retry
    tier: `retry(work)` returns that record, or None once the tiers are used up, and only
    then is the item dead-lettered (category retries_exhausted). A retry is not a dead
    letter: the breaker does not count it.
    """

    def __init__(
        self,
        next_step: Step,
        *,
        build: Callable[[Work], OutRecord],
        breaker: Breaker | None = None,
        on_dead_letter: Callable[[Work], None] | None = None,
        retry: Callable[[Work], OutRecord | None] | None = None,
    ) -> None:
        super().__init__(next_step)
        self._build = build
        self._breaker = breaker
        self._on_dead_letter = on_dead_letter
        self._retry = retry

    def submit(self, work: Work) -> None:
        error = work.error
        if isinstance(error, FatalError):
            raise error
        if isinstance(error, RetryableError) and self._retry is not None:
            record = self._retry(work)
            if record is not None:
                log.info(
                    "retrying later",
                    extra={"tenant": work.tenant, "reason": error.reason, "tier": record.tier},
                )
                self._forward(replace(work, record=record, outcome="retry"))
                return
        reason = getattr(error, "reason", type(error).__name__)
        # a record the transport refused before parsing (a shared-topic record whose tenant is
        # not proven) says who wrote it, not that this worker is failing: counted, it would let
        # anyone able to write to the shared topic open the breaker and stop every tenant on it
        if self._breaker is not None and work.message.rejection is None:
            # before publishing: a tripping breaker must not let one more dead letter out
            self._breaker.record_dead_letter(reason)
        log.warning(
            "dead-lettering",
            extra={
                "tenant": work.tenant,
                "reason": getattr(error, "reason", type(error).__name__),
                "error": str(error),
                "idempotency_key": work.arrival.idempotency_key if work.arrival else None,
            },
        )
        if self._on_dead_letter is not None:
            self._on_dead_letter(work)
        self._forward(replace(work, record=self._build(work), outcome="dead_letter"))


# -- publish and commit -------------------------------------------------------------------
class Publish(_Forwarding):
    """Publishes each item's record and forwards it once the broker confirmed it.

    A retryable publish failure is re-published with exponential backoff, up to
    `attempts`; after that the worker stops (FatalError) rather than ack an arrival
    whose verdict is not durable — re-delivery after the restart recovers it.
    """

    def __init__(
        self,
        next_step: Step,
        *,
        sink: Sink,
        attempts: int = 5,
        backoff: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(next_step)
        self._sink = sink
        self._attempts = attempts
        self._backoff = backoff
        self._clock = clock
        self._waiting: list[tuple[Future[None], Work, int]] = []
        self._retry_at: list[tuple[float, Work, int]] = []

    def submit(self, work: Work) -> None:
        self._send(work, 1)

    def _send(self, work: Work, attempt: int) -> None:
        assert work.record is not None
        try:
            future = self._sink.publish(work.record)
        except MessageRejected:
            self._retry_at.append((self._clock() + 0.01, work, attempt))
            return
        except RetryableError as error:
            # refused before it left (e.g. a record over the producer's size limit): the same
            # bounded backoff as a failed delivery, then a clean FatalError, never an escape
            self._retry_or_stop(work, attempt, error, self._clock())
            return
        self._waiting.append((future, work, attempt))

    def poll(self) -> None:
        self._sink.poll()
        now = self._clock()
        due = [r for r in self._retry_at if r[0] <= now]
        self._retry_at = [r for r in self._retry_at if r[0] > now]
        for _, work, attempt in due:
            self._send(work, attempt)
        still: list[tuple[Future[None], Work, int]] = []
        for future, work, attempt in self._waiting:
            if not future.done():
                still.append((future, work, attempt))
                continue
            error = future.exception()
            if error is None:
                self._forward(work)
            else:
                self._retry_or_stop(work, attempt, error, now)
        self._waiting = still

    def _retry_or_stop(self, work: Work, attempt: int, error: BaseException, now: float) -> None:
        if isinstance(error, RetryableError) and attempt < self._attempts:
            delay = self._backoff * (2 ** (attempt - 1))
            log.warning("publish failed; retrying", extra={"error": str(error), "attempt": attempt})
            self._retry_at.append((now + delay, work, attempt + 1))
            return
        record = work.record
        assert record is not None
        what = {"dead_letter": "dead letter", "retry": "retry record"}.get(work.outcome or "", "record")
        detail = (
            f"could not publish the {what} of tenant {record.tenant} to its {record.destination} "
            f"({len(record.value)} bytes) after {attempt} attempt(s): {error}"
        )
        # the arrival is not acked: after the restart it is redelivered and tried again
        log.error("publish failed; stopping the worker", extra={"reason": "publish_failed", "error": detail})
        raise FatalError("publish_failed", detail)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (self._waiting or self._retry_at) and (deadline is None or time.monotonic() < deadline):
            self._sink.flush(0.05)
            self.poll()

    def pending(self) -> int:
        return len(self._waiting) + len(self._retry_at)


class Commit(Step):
    """The last step: ack finished messages to the source and release their admission."""

    def __init__(
        self,
        source: Source,
        in_flight: InFlightLedger,
        *,
        on_done: Callable[[Work], None] | None = None,
    ) -> None:
        self._source = source
        self._in_flight = in_flight
        self._on_done = on_done
        self._ready: list[Work] = []
        self.acked = 0

    def submit(self, work: Work) -> None:
        self._ready.append(work)

    def poll(self) -> None:
        if not self._ready:
            return
        ready, self._ready = self._ready, []
        self._source.ack([w.message.token for w in ready])
        for work in ready:
            self._in_flight.release(work.tenant, work.duration_seconds)
            if self._on_done is not None:
                self._on_done(work)
        self.acked += len(ready)

    def join(self, timeout: float | None = None) -> None:
        self.poll()

    def pending(self) -> int:
        return len(self._ready)
