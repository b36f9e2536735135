"""The worker's pipeline hooks: they turn what the runner sees into metrics and log lines.

`Pipeline(..., hooks=...)` and `Worker` call these methods (each optional: the runner
calls only the ones a hooks object has, so a test's own small hooks keep working):

    consumed(work)            an arrival was admitted               events_consumed
    batch_scored(batch, s)    one micro-batch was scored            batch_*, queue wait, model latency
    done(work)                an arrival was acked (any outcome)    acked, verdicts, scores, drift,
                                                                    end-to-end, dead letters, retries,
                                                                    duplicates
    paused(tenants) /         backpressure paused / resumed         paused_partitions
    resumed(tenants)
    turn(worker)              once per loop turn (cheap; the slow   heartbeat, in-flight, lag,
                              gauges refresh every `refresh_s`)     GPU memory, readiness

Log lines carry tenant, idempotency key and event id through `services.logs.log_context`.

This module must never raise into the pipeline (a metric is not worth an arrival), never
import torch or a transport SDK (GPU memory comes from the detector's `memory_stats()`,
lag from the source's `lag()`), and never put an id, key or URI into a metric label.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from consumers.runner import Worker
from consumers.tenancy import tenant_of_kafka_topic
from services import metrics
from services.logs import log_context

if TYPE_CHECKING:
    from consumers.ports import Detector
    from consumers.work import Work
    from services.health import Heartbeat, Readiness

__all__ = ["PipelineHooks", "work_context"]

log = logging.getLogger("audioguard.instrumentation")

_CATEGORIES: frozenset[str] = frozenset({"poison", "retries_exhausted", "fatal"})
_LABELS: frozenset[str] = frozenset({"synthetic", "bona_fide", "inconclusive"})


@contextmanager
def work_context(work: Work) -> Iterator[None]:
    """Bind the arrival's tenant, idempotency key and event id to the log lines inside."""
    arrival = work.arrival
    if arrival is None:
        with log_context(tenant=work.tenant):
            yield
        return
    with log_context(
        tenant=work.tenant,
        idempotency_key=arrival.idempotency_key,
        event_id=arrival.event_id,
        content_id=arrival.content_id,
    ):
        yield


def _category(error: BaseException | None) -> metrics.DeadLetterCategory:
    category = getattr(error, "category", "poison")
    # an unexpected exception type that reached the DLQ is the input's fault until shown otherwise
    return cast(metrics.DeadLetterCategory, category if category in _CATEGORIES else "poison")


def _reason(error: BaseException | None) -> str:
    return str(getattr(error, "reason", None) or type(error).__name__.lower())


class PipelineHooks:
    """Metrics and structured logs for one worker. Thread-safe where the runner needs it
    (only `turn` and the step callbacks call it, all on the worker's loop thread)."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        model_version: str = "unknown",
        detector: Detector | None = None,
        heartbeat: Heartbeat | None = None,
        readiness: Readiness | None = None,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        drift: metrics.ScoreDriftTracker | None = None,
        max_windows: int | None = None,
    ) -> None:
        self.device = device
        self.max_windows = max_windows
        self.model_version = model_version
        self.detector = detector
        self.heartbeat = heartbeat
        self.readiness = readiness
        self.refresh_s = refresh_s
        self._clock = clock
        self._next_refresh = 0.0
        self.drift = drift or metrics.ScoreDriftTracker()
        self._tenants: set[str] = set()
        self._lag_series: set[tuple[str, str, str]] = set()
        self.errors = 0  # hook failures swallowed (visible to tests)

    @classmethod
    def for_detector(cls, detector: Detector, **options: Any) -> PipelineHooks:
        return cls(
            device=str(getattr(detector, "device", "cpu")),
            model_version=str(detector.meta.version),
            detector=detector,
            **options,
        )

    # -- guard ---------------------------------------------------------------------------
    def _safely(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - instrumentation must never fail an arrival
            self.errors += 1
            log.exception("instrumentation hook failed", extra={"hook": what})

    # -- step callbacks ------------------------------------------------------------------
    def consumed(self, work: Work) -> None:
        def run() -> None:
            self._tenants.add(work.tenant)
            metrics.EVENTS_CONSUMED.labels(tenant=work.tenant).inc()

        self._safely("consumed", run)

    def batch_scored(self, batch: list[Work], seconds: float) -> None:
        def run() -> None:
            windows = sum(len(w.windows) for w in batch if w.windows is not None)
            metrics.BATCH_WINDOWS.observe(windows)
            metrics.BATCH_AUDIO_SECONDS.observe(sum(w.duration_seconds for w in batch))
            if self.max_windows:
                metrics.BATCH_FILL_RATIO.observe(min(1.0, windows / self.max_windows))
            metrics.MODEL_LATENCY_SECONDS.labels(device=self.device).observe(seconds)
            for work in batch:
                if work.scoring_started is not None:
                    wait = max(0.0, work.scoring_started - work.admitted_at)
                    metrics.QUEUE_WAIT_SECONDS.labels(tenant=work.tenant).observe(wait)
            log.debug("batch scored", extra={"items": len(batch), "windows": windows, "seconds": seconds})

        self._safely("batch_scored", run)

    def done(self, work: Work) -> None:
        self._safely("done", lambda: self._done(work))

    def _done(self, work: Work) -> None:
        tenant = work.tenant
        metrics.EVENTS_ACKED.labels(tenant=tenant).inc()
        with work_context(work):
            if work.outcome == "verdict":
                self._verdict(work)
            elif work.outcome == "dead_letter":
                category, reason = _category(work.error), _reason(work.error)
                metrics.record_dead_letter(tenant, category, reason)
                log.info("dead letter acked", extra={"category": category, "reason": reason})
            elif work.outcome == "retry":
                tier = getattr(work.record, "tier", None)
                metrics.record_retry(tenant, _stage(work), tier if isinstance(tier, int) else None)
                log.info("routed to a retry tier", extra={"tier": tier, "reason": _reason(work.error)})
            elif work.outcome == "duplicate":
                metrics.DUPLICATES.labels(tenant=tenant).inc()
                log.info("duplicate answered from the verdict store")

    def _verdict(self, work: Work) -> None:
        score, label, version = self._verdict_fields(work)
        end_to_end = 0.0
        if work.arrival is not None:
            end_to_end = (datetime.now(UTC) - work.arrival.submitted_at).total_seconds()
        metrics.record_verdict(work.tenant, cast(metrics.VerdictLabel, label), score, version, end_to_end)
        self.drift.observe(work.tenant, version, score)
        log.info(
            "verdict published",
            extra={"label": label, "score": round(score, 4), "end_to_end_seconds": round(end_to_end, 3)},
        )

    def _verdict_fields(self, work: Work) -> tuple[float, str, str]:
        """Score, label and model version of the verdict as published (the stored one wins)."""
        if work.record is not None:
            try:
                verdict = json.loads(work.record.value)
                label = str(verdict["label"])
                return (
                    float(verdict["score"]),
                    label if label in _LABELS else "inconclusive",
                    str(verdict["model"]["version"]),
                )
            except (ValueError, KeyError, TypeError):
                pass
        score = float(work.scores.mean()) if work.scores is not None and len(work.scores) else 0.0
        label = work.label if work.label in _LABELS else "inconclusive"
        return score, str(label), self.model_version

    # -- worker callbacks ----------------------------------------------------------------
    def paused(self, tenants: Iterable[str]) -> None:
        for tenant in tenants:
            log.info("tenant paused by backpressure", extra={"tenant": tenant})

    def resumed(self, tenants: Iterable[str]) -> None:
        for tenant in tenants:
            log.info("tenant resumed", extra={"tenant": tenant})

    def turn(self, worker: object) -> None:
        """Once per loop turn: the heartbeat always, the gauges every `refresh_s` seconds."""
        if self.heartbeat is not None:
            self.heartbeat.beat()
        now = self._clock()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.refresh_s
        if isinstance(worker, Worker):
            self._safely("turn", lambda: self._refresh(worker))

    def _refresh(self, worker: Worker) -> None:
        pipeline = worker.pipeline
        source = worker.source
        if self.readiness is not None and not self.readiness.transport_connected and source.ready():
            self.readiness.set(transport_connected=True)
        in_flight = pipeline.in_flight
        paused = source.paused()
        tenants = self._tenants | set(in_flight.events) | set(paused) | set(worker.tenants_seen)
        lag_of = getattr(source, "lag", None)
        lag: dict[tuple[str, int], int] = lag_of() if callable(lag_of) else {}
        partitions: dict[str, int] = {}
        for topic, _partition in lag:
            owner = tenant_of_kafka_topic(topic)
            if owner is not None:
                partitions[owner] = partitions.get(owner, 0) + 1
        for tenant in tenants:
            metrics.IN_FLIGHT_EVENTS.labels(tenant=tenant).set(in_flight.events.get(tenant, 0))
            metrics.IN_FLIGHT_AUDIO_SECONDS.labels(tenant=tenant).set(in_flight.seconds.get(tenant, 0.0))
            # Kafka pauses every assigned partition of the tenant; the others pause one stream
            count = partitions.get(tenant, 1) if tenant in paused else 0
            metrics.PAUSED_PARTITIONS.labels(tenant=tenant).set(count)
        if lag:
            self._set_lag(lag)
        stats = getattr(self.detector, "memory_stats", None)
        if callable(stats):
            found = stats()
            if found is not None:
                metrics.set_gpu_memory(
                    self.device,
                    allocated=int(found["allocated"]),
                    reserved=int(found["reserved"]),
                    total=int(found["total"]),
                )

    def _set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        seen: set[tuple[str, str, str]] = set()
        for (topic, partition), messages in lag.items():
            tenant = tenant_of_kafka_topic(topic) or "unknown"
            series = (tenant, topic, str(partition))
            seen.add(series)
            metrics.CONSUMER_LAG_MESSAGES.labels(*series).set(messages)
        # a partition that moved to another worker must not report its last lag forever
        for series in self._lag_series - seen:
            metrics.CONSUMER_LAG_MESSAGES.remove(*series)
        self._lag_series = seen


def _stage(work: Work) -> metrics.Stage:
    """Where a retried arrival failed, from its error's reason (a closed set for the label)."""
    reason = _reason(work.error)
    for stage in ("fetch", "decode", "score", "publish", "store", "commit"):
        if stage in reason:
            return stage
    if "storage" in reason or "s3" in reason or "gcs" in reason:
        return "fetch"
    if "verdict_store" in reason or "redis" in reason:
        return "store"
    return "score" if work.windows is not None else "fetch"
