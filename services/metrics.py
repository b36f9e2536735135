"""Every Prometheus metric audioguard exposes, in one typed module.

The worker, the detector and the transports import the constants below (or the small
helpers that bound their label values); no other module creates a metric, so a typo in a
name is an attribute error that mypy catches, and the dashboard and alert rules
(`deploy/prometheus`, `deploy/grafana`) are checked against `exposed_metric_names()`.

All metrics live in prometheus-client's default registry and are served on
``settings.metrics_port`` by `services.health`. Counters are exposed with ``_total``,
histograms with ``_bucket`` / ``_sum`` / ``_count``, the Info metric with ``_info``.

    name (as exposed)                              type       labels
        meaning
    ---------------------------------------------  ---------  ------------------------------------
    audioguard_events_consumed_total               counter    tenant
        arrivals handed out by the source
    audioguard_events_acked_total                  counter    tenant
        arrivals acked/committed after the verdict or dead letter was durable
    audioguard_verdicts_total                      counter    tenant, label
        verdicts published (label: synthetic / bona_fide / inconclusive)
    audioguard_dead_letters_total                  counter    tenant, category, reason
        dead letters written (category: poison / retries_exhausted / fatal; reason: error code)
    audioguard_retries_total                       counter    tenant, stage, tier
        retries (stage: fetch/decode/score/publish/store/commit; tier: in_place or 1, 2, ...)
    audioguard_duplicates_total                    counter    tenant
        duplicate arrivals answered from the verdict store
    audioguard_shared_spilled_total                counter    tenant
        shared-topic records of a paused tenant copied to its overflow topic (acknowledged)
    audioguard_batch_windows                       histogram  -
        windows per scored micro-batch
    audioguard_batch_fill_ratio                    histogram  -
        windows / max_windows of each released micro-batch
    audioguard_batch_audio_seconds                 histogram  -
        seconds of audio per scored micro-batch
    audioguard_batch_oom_splits_total              counter    -
        micro-batches split after the accelerator ran out of memory
    audioguard_queue_wait_seconds                  histogram  tenant
        receipt by the worker -> start of scoring
    audioguard_model_latency_seconds               histogram  device
        model forward time of one micro-batch
    audioguard_end_to_end_seconds                  histogram  tenant
        arrival submitted_at -> verdict published
    audioguard_in_flight_events                    gauge      tenant
        admitted but not yet acked
    audioguard_in_flight_audio_seconds             gauge      tenant
        seconds of decoded audio admitted but not yet acked
    audioguard_paused_partitions                   gauge      tenant
        partitions paused by backpressure (Pub/Sub, Kinesis: 1 while the tenant is paused)
    audioguard_consumer_lag_messages               gauge      tenant, topic, partition
        high watermark - committed offset (Kafka)
    audioguard_consumer_lag_seconds                gauge      tenant, topic, partition
        seconds behind the head (Kinesis MillisBehindLatest, Pub/Sub oldest unacked age)
    audioguard_gpu_memory_bytes                    gauge      device, kind
        CUDA memory (kind: allocated / reserved / total); only set when CUDA is present
    audioguard_score                               histogram  tenant, model_version
        distribution of verdict scores
    audioguard_score_psi                           gauge      tenant, model_version
        population stability index of recent scores against the reference (`ScoreDrift`)
    audioguard_worker_info                         info       worker_id, model_version, ...
        identity of this process
    audioguard_circuit_breaker_state               gauge      tenant
        dead-letter circuit breaker: 0 closed, 1 open
    audioguard_ready                               gauge      -
        1 when /readyz answers 200 (refreshed on each scrape by services.health)
    audioguard_last_heartbeat_timestamp_seconds    gauge      -
        unix time at which the process loop last beat
    audioguard_worker_restarts_total               counter    worker_process
        children restarted by `worker --processes / --gpus` (served by its supervisor; the
        children's own series carry the same `worker_process` label there)
    audioguard_reporting_rows_total                counter    table, outcome
        rows the reporting app offered to PostgreSQL (outcome: inserted / duplicate)
    audioguard_reporting_invalid_total             counter    reason
        verdict / dead-letter records that failed validation (sent to the reporting DLQ)
    audioguard_reporting_lag_messages              gauge      topic, partition
        high watermark - next offset the reporting app will write (grows while PostgreSQL is down)
    audioguard_reporting_database_up               gauge      -
        1 while the reporting app's last write reached PostgreSQL, 0 while it waits for it
    audioguard_api_requests_total                  counter    route, status
        HTTP API requests answered (route: the path template; status: the HTTP status code)
    audioguard_api_request_seconds                 histogram  route
        HTTP API request handling time (a `Prefer: wait` request includes its wait)
    audioguard_api_rate_limited_total              counter    tenant
        HTTP API requests refused with 429 by the per-client rate limit

Cardinality is bounded on purpose: label values are tenants (validated ids from topic
names), closed enumerations (labels, categories, stages) or reason codes (checked against
the reason-code shape and capped, see `bounded_reason`). This module must never put an
id, a key, a URI or free text into a label, and must never import torch or an SDK: the
detector reports GPU memory through `set_gpu_memory`.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "BATCH_AUDIO_SECONDS",
    "BATCH_FILL_RATIO",
    "BATCH_OOM_SPLITS",
    "BATCH_WINDOWS",
    "CIRCUIT_BREAKER_STATE",
    "CONSUMER_LAG_MESSAGES",
    "CONSUMER_LAG_SECONDS",
    "DEAD_LETTERS",
    "DUPLICATES",
    "END_TO_END_SECONDS",
    "EVENTS_ACKED",
    "EVENTS_CONSUMED",
    "GPU_MEMORY_BYTES",
    "IN_FLIGHT_AUDIO_SECONDS",
    "IN_FLIGHT_EVENTS",
    "LAST_HEARTBEAT",
    "MODEL_LATENCY_SECONDS",
    "PAUSED_PARTITIONS",
    "QUEUE_WAIT_SECONDS",
    "READY",
    "REPORTING_DATABASE_UP",
    "REPORTING_INVALID",
    "REPORTING_LAG_MESSAGES",
    "REPORTING_ROWS",
    "RETRIES",
    "SCORE",
    "SCORE_PSI",
    "VERDICTS",
    "WORKER_INFO",
    "WORKER_RESTARTS",
    "ALL_METRICS",
    "BreakerState",
    "GpuMemoryKind",
    "ScoreDrift",
    "ScoreDriftTracker",
    "Stage",
    "bounded_reason",
    "exposed_metric_names",
    "population_stability_index",
    "record_dead_letter",
    "record_retry",
    "record_verdict",
    "set_circuit_breaker",
    "set_gpu_memory",
    "set_worker_info",
]

#: where a retry happened; a closed set so the label stays small
Stage = Literal["fetch", "decode", "score", "publish", "store", "commit"]
VerdictLabel = Literal["synthetic", "bona_fide", "inconclusive"]
DeadLetterCategory = Literal["poison", "retries_exhausted", "fatal"]
GpuMemoryKind = Literal["allocated", "reserved", "total"]
BreakerState = Literal["closed", "open"]

_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Up to the last Kafka retry tier (600 s) and beyond: a verdict after retries is still a verdict.
_END_TO_END_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
)
_SCORE_BUCKETS: Final = tuple(round(0.05 * i, 2) for i in range(1, 21))

# --- events -------------------------------------------------------------------------------------

EVENTS_CONSUMED: Final = Counter(
    "audioguard_events_consumed", "Arrivals handed out by the source.", ["tenant"]
)
EVENTS_ACKED: Final = Counter(
    "audioguard_events_acked",
    "Arrivals acked or committed after their verdict or dead letter was durably written.",
    ["tenant"],
)
VERDICTS: Final = Counter("audioguard_verdicts", "Verdicts published.", ["tenant", "label"])
DEAD_LETTERS: Final = Counter(
    "audioguard_dead_letters", "Dead letters written.", ["tenant", "category", "reason"]
)
RETRIES: Final = Counter(
    "audioguard_retries",
    "Retries: in place (tier=in_place) or by routing to a Kafka retry tier (tier=1, 2, ...).",
    ["tenant", "stage", "tier"],
)
DUPLICATES: Final = Counter(
    "audioguard_duplicates", "Duplicate arrivals answered from the verdict store.", ["tenant"]
)
SHARED_SPILLED: Final = Counter(
    "audioguard_shared_spilled",
    "Shared-topic records of a paused tenant copied to its overflow topic and acknowledged.",
    ["tenant"],
)

# --- batching and latency ------------------------------------------------------------------------

BATCH_WINDOWS: Final = Histogram(
    "audioguard_batch_windows",
    "Windows per scored micro-batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_FILL_RATIO: Final = Histogram(
    "audioguard_batch_fill_ratio",
    "Windows of a released micro-batch divided by the batch's max_windows.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
BATCH_AUDIO_SECONDS: Final = Histogram(
    "audioguard_batch_audio_seconds",
    "Seconds of audio per scored micro-batch.",
    buckets=(1, 2, 5, 10, 30, 60, 120, 256, 512, 1024),
)
BATCH_OOM_SPLITS: Final = Counter(
    "audioguard_batch_oom_splits", "Micro-batches split after the accelerator ran out of memory."
)
QUEUE_WAIT_SECONDS: Final = Histogram(
    "audioguard_queue_wait_seconds",
    "From receipt by the worker to the start of scoring.",
    ["tenant"],
    buckets=_WAIT_BUCKETS,
)
MODEL_LATENCY_SECONDS: Final = Histogram(
    "audioguard_model_latency_seconds",
    "Model forward time of one micro-batch.",
    ["device"],
    buckets=_LATENCY_BUCKETS,
)
END_TO_END_SECONDS: Final = Histogram(
    "audioguard_end_to_end_seconds",
    "From the arrival's submitted_at to its verdict being published.",
    ["tenant"],
    buckets=_END_TO_END_BUCKETS,
)

# --- flow control and lag ------------------------------------------------------------------------

IN_FLIGHT_EVENTS: Final = Gauge(
    "audioguard_in_flight_events", "Arrivals admitted but not yet acked.", ["tenant"]
)
IN_FLIGHT_AUDIO_SECONDS: Final = Gauge(
    "audioguard_in_flight_audio_seconds", "Seconds of decoded audio admitted but not yet acked.", ["tenant"]
)
PAUSED_PARTITIONS: Final = Gauge(
    "audioguard_paused_partitions",
    "Partitions paused by backpressure (Pub/Sub, Kinesis: 1 while the tenant is paused).",
    ["tenant"],
)
CONSUMER_LAG_MESSAGES: Final = Gauge(
    "audioguard_consumer_lag_messages",
    "Messages between the committed offset and the high watermark (Kafka).",
    ["tenant", "topic", "partition"],
)
CONSUMER_LAG_SECONDS: Final = Gauge(
    "audioguard_consumer_lag_seconds",
    "How far behind the head the consumer is, in seconds (Kinesis, Pub/Sub).",
    ["tenant", "topic", "partition"],
)

# --- the model -----------------------------------------------------------------------------------

GPU_MEMORY_BYTES: Final = Gauge(
    "audioguard_gpu_memory_bytes",
    "CUDA memory of the detector's device (kind: allocated, reserved, total). Absent without CUDA.",
    ["device", "kind"],
)
SCORE: Final = Histogram(
    "audioguard_score",
    "Distribution of verdict scores (higher = more likely synthetic).",
    ["tenant", "model_version"],
    buckets=_SCORE_BUCKETS,
)
SCORE_PSI: Final = Gauge(
    "audioguard_score_psi",
    "Population stability index of the recent scores against the reference window.",
    ["tenant", "model_version"],
)

# --- the process ---------------------------------------------------------------------------------

WORKER_INFO: Final = Info("audioguard_worker", "Identity of this worker process.")
CIRCUIT_BREAKER_STATE: Final = Gauge(
    "audioguard_circuit_breaker_state",
    "Dead-letter circuit breaker: 0 closed, 1 open (the worker stops).",
    ["tenant"],
)
READY: Final = Gauge("audioguard_ready", "1 when the worker is ready (model loaded and warm, transport up).")
LAST_HEARTBEAT: Final = Gauge(
    "audioguard_last_heartbeat_timestamp_seconds", "Unix time at which the process loop last beat."
)

WORKER_RESTARTS: Final = Counter(
    "audioguard_worker_restarts",
    "Worker processes restarted by the supervisor after an unexpected exit.",
    ["worker_process"],
)

# --- the reporting pipeline (reporting.app) --------------------------------------------------------

REPORTING_ROWS: Final = Counter(
    "audioguard_reporting_rows", "Rows offered to the reporting store.", ["table", "outcome"]
)
REPORTING_INVALID: Final = Counter(
    "audioguard_reporting_invalid", "Records the reporting app dead-lettered.", ["reason"]
)
REPORTING_LAG_MESSAGES: Final = Gauge(
    "audioguard_reporting_lag_messages",
    "High watermark - next offset the reporting app will write.",
    ["topic", "partition"],
)
REPORTING_DATABASE_UP: Final = Gauge(
    "audioguard_reporting_database_up", "1 while the reporting app's writes reach PostgreSQL."
)

# --- the HTTP API (api/) ---------------------------------------------------------------------------

API_REQUESTS: Final = Counter(
    "audioguard_api_requests",
    "HTTP API requests answered, by route template and status.",
    ["route", "status"],
)
API_REQUEST_SECONDS: Final = Histogram(
    "audioguard_api_request_seconds",
    "HTTP API request handling time, a Prefer: wait included.",
    ["route"],
    buckets=_END_TO_END_BUCKETS,
)
API_RATE_LIMITED: Final = Counter(
    "audioguard_api_rate_limited", "HTTP API requests refused with 429 by the per-client limit.", ["tenant"]
)

ALL_METRICS: Final[tuple[MetricWrapperBase, ...]] = (
    REPORTING_ROWS,
    REPORTING_INVALID,
    REPORTING_LAG_MESSAGES,
    REPORTING_DATABASE_UP,
    EVENTS_CONSUMED,
    EVENTS_ACKED,
    VERDICTS,
    DEAD_LETTERS,
    RETRIES,
    DUPLICATES,
    SHARED_SPILLED,
    BATCH_WINDOWS,
    BATCH_FILL_RATIO,
    BATCH_AUDIO_SECONDS,
    BATCH_OOM_SPLITS,
    QUEUE_WAIT_SECONDS,
    MODEL_LATENCY_SECONDS,
    END_TO_END_SECONDS,
    IN_FLIGHT_EVENTS,
    IN_FLIGHT_AUDIO_SECONDS,
    PAUSED_PARTITIONS,
    CONSUMER_LAG_MESSAGES,
    CONSUMER_LAG_SECONDS,
    GPU_MEMORY_BYTES,
    SCORE,
    SCORE_PSI,
    WORKER_INFO,
    CIRCUIT_BREAKER_STATE,
    READY,
    LAST_HEARTBEAT,
    WORKER_RESTARTS,
    API_REQUESTS,
    API_REQUEST_SECONDS,
    API_RATE_LIMITED,
)

_SUFFIXES: Final[Mapping[str, tuple[str, ...]]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exposed_metric_names() -> frozenset[str]:
    """Every series name the metrics above can expose (with their type's suffixes)."""
    names: set[str] = set()
    for metric in ALL_METRICS:
        for family in metric.describe():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)


# --- bounded label helpers -----------------------------------------------------------------------

_REASON_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: reason codes are a closed set in errors.py's spirit; the cap is a guard against a bug
#: that turns free text into reasons, so one bad deploy cannot explode the series count
MAX_REASONS: Final = 64
_seen_reasons: set[str] = set()
_reasons_lock = threading.Lock()


def bounded_reason(reason: str) -> str:
    """`reason` if it looks like a reason code and the cap is not reached, else "other"."""
    if not _REASON_RE.match(reason):
        return "other"
    with _reasons_lock:
        if reason in _seen_reasons:
            return reason
        if len(_seen_reasons) >= MAX_REASONS:
            return "other"
        _seen_reasons.add(reason)
        return reason


def record_dead_letter(tenant: str, category: DeadLetterCategory, reason: str) -> None:
    DEAD_LETTERS.labels(tenant=tenant, category=category, reason=bounded_reason(reason)).inc()


def record_retry(tenant: str, stage: Stage, tier: int | None = None) -> None:
    """One retry: in place when `tier` is None, else routed to Kafka retry tier `tier`."""
    RETRIES.labels(tenant=tenant, stage=stage, tier="in_place" if tier is None else str(tier)).inc()


def record_verdict(
    tenant: str, label: VerdictLabel, score: float, model_version: str, end_to_end_seconds: float
) -> None:
    """A published verdict: counts it, and observes its score and end-to-end latency."""
    VERDICTS.labels(tenant=tenant, label=label).inc()
    SCORE.labels(tenant=tenant, model_version=model_version).observe(score)
    # A producer's clock may run ahead of ours; a negative latency is clock skew, not speed.
    END_TO_END_SECONDS.labels(tenant=tenant).observe(max(0.0, end_to_end_seconds))


def set_gpu_memory(device: str, *, allocated: int, reserved: int, total: int) -> None:
    """Called by the detector (the only module that may ask torch) when CUDA is present."""
    GPU_MEMORY_BYTES.labels(device=device, kind="allocated").set(allocated)
    GPU_MEMORY_BYTES.labels(device=device, kind="reserved").set(reserved)
    GPU_MEMORY_BYTES.labels(device=device, kind="total").set(total)


def set_circuit_breaker(tenant: str, state: BreakerState) -> None:
    CIRCUIT_BREAKER_STATE.labels(tenant=tenant).set(1 if state == "open" else 0)


def set_worker_info(worker_id: str, model_version: str, **extra: str) -> None:
    """Identity labels (worker id, model version, transport ...); one series per process."""
    WORKER_INFO.info({"worker_id": worker_id, "model_version": model_version, **extra})


# --- score drift ---------------------------------------------------------------------------------


def population_stability_index(
    reference: Iterable[float], recent: Iterable[float], bins: int = 10, epsilon: float = 1e-4
) -> float:
    """PSI = sum((p_recent - p_ref) * ln(p_recent / p_ref)) over equal-width bins on [0, 1].

    Scores are probabilities, so fixed bins on [0, 1] keep the index comparable across
    tenants and time. Empty bins are floored at `epsilon` so the log stays finite.
    Rule of thumb: < 0.1 stable, 0.1 - 0.25 moderate shift, > 0.25 significant shift.
    """
    ref = np.clip(np.fromiter(reference, dtype=np.float64), 0.0, 1.0)
    cur = np.clip(np.fromiter(recent, dtype=np.float64), 0.0, 1.0)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("both windows need at least one score")
    edges = np.linspace(0.0, 1.0, bins + 1)
    p_ref = np.maximum(np.histogram(ref, bins=edges)[0] / ref.size, epsilon)
    p_cur = np.maximum(np.histogram(cur, bins=edges)[0] / cur.size, epsilon)
    return float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref)))


class ScoreDrift:
    """Tracks score drift of one (tenant, model version) and keeps `audioguard_score_psi` current.

    The reference window is either given (scores of the calibration set) or filled by the
    first `reference_size` scores seen; after that it is frozen. The recent window is the
    last `window_size` scores. Every `update_every` observations, once the recent window
    holds at least `min_recent` scores, the PSI is recomputed and the gauge set.
    Memory is bounded by reference_size + window_size floats. Thread-safe.
    """

    def __init__(
        self,
        tenant: str,
        model_version: str,
        *,
        reference: Iterable[float] | None = None,
        reference_size: int = 2000,
        window_size: int = 500,
        min_recent: int = 100,
        update_every: int = 50,
        bins: int = 10,
    ) -> None:
        if reference_size < 1 or window_size < 1 or update_every < 1 or bins < 2:
            raise ValueError("sizes must be positive and bins at least 2")
        self._gauge = SCORE_PSI.labels(tenant=tenant, model_version=model_version)
        self._reference: deque[float] = deque(maxlen=reference_size)
        self._recent: deque[float] = deque(maxlen=window_size)
        self._frozen = False
        self._min_recent = max(1, min(min_recent, window_size))
        self._update_every = update_every
        self._bins = bins
        self._since_update = 0
        self._psi: float | None = None
        self._lock = threading.Lock()
        if reference is not None:
            self._reference.extend(reference)
            if not self._reference:
                raise ValueError("an explicit reference needs at least one score")
            self._frozen = True

    @property
    def psi(self) -> float | None:
        """The last computed index, or None before the first computation."""
        return self._psi

    @property
    def reference_ready(self) -> bool:
        return self._frozen

    def observe(self, score: float) -> float | None:
        """Add one score; returns the PSI when this call recomputed it, else None."""
        if not math.isfinite(score):
            return None
        with self._lock:
            if not self._frozen:
                self._reference.append(score)
                if len(self._reference) == self._reference.maxlen:
                    self._frozen = True
                return None
            self._recent.append(score)
            self._since_update += 1
            if self._since_update < self._update_every or len(self._recent) < self._min_recent:
                return None
            self._since_update = 0
            psi = population_stability_index(self._reference, self._recent, self._bins)
            self._psi = psi
        self._gauge.set(psi)
        return psi


#: a model version's stored drift reference (the gate's scores, services.tools.worker sets it on
#: load) is used only when it holds at least this many scores; otherwise the first
#: `reference_size` live scores are the reference, as before
MIN_STORED_REFERENCE = 500
_STORED_REFERENCES: dict[str, tuple[float, ...]] = {}


def set_drift_reference(model_version: str, scores: Iterable[float]) -> bool:
    """Record the reference every new ScoreDrift of `model_version` starts from (the same in
    every worker and after a restart); False (and nothing recorded) below MIN_STORED_REFERENCE."""
    values = tuple(float(s) for s in scores)
    if len(values) < MIN_STORED_REFERENCE:
        return False
    _STORED_REFERENCES[model_version] = values
    return True


class ScoreDriftTracker:
    """One `ScoreDrift` per (tenant, model version), created on first use; owned by the runner.
    A model version with a stored reference (`set_drift_reference`) starts from it."""

    def __init__(
        self,
        *,
        reference_size: int = 2000,
        window_size: int = 500,
        min_recent: int = 100,
        update_every: int = 50,
        bins: int = 10,
    ) -> None:
        self._sizes = (reference_size, window_size, min_recent, update_every, bins)
        self._drifts: dict[tuple[str, str], ScoreDrift] = {}
        self._lock = threading.Lock()

    def drift(self, tenant: str, model_version: str) -> ScoreDrift:
        key = (tenant, model_version)
        with self._lock:
            found = self._drifts.get(key)
            if found is None:
                reference_size, window_size, min_recent, update_every, bins = self._sizes
                stored = _STORED_REFERENCES.get(model_version)
                found = self._drifts[key] = ScoreDrift(
                    tenant,
                    model_version,
                    reference=stored,
                    reference_size=max(reference_size, len(stored or ())),
                    window_size=window_size,
                    min_recent=min_recent,
                    update_every=update_every,
                    bins=bins,
                )
            return found

    def observe(self, tenant: str, model_version: str, score: float) -> float | None:
        return self.drift(tenant, model_version).observe(score)
