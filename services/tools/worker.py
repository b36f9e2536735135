"""Assemble a worker from settings: the one place that picks each collaborator of the pipeline.

`consumers.runner` is a generic loop over steps and knows only the seams of
`consumers.ports`; this module chooses the transport, storage, verdict store, detector,
dead-letter writer and circuit breaker, the way Arroyo's strategy factory builds its chain.
The CLI, the demo, the bench and the tests build workers here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consumers.instrumentation import PipelineHooks
from consumers.ports import Detector, Hooks
from consumers.runner import Pipeline, Worker
from dlq.breaker import DlqBreaker
from dlq.envelope import DeadLetterWriter
from services.health import Heartbeat, Readiness
from services.settings import Settings

if TYPE_CHECKING:
    from services.storage import AudioStorage

__all__ = ["build_worker", "dead_letter_writer", "load_serving_detector"]


def build_worker(
    settings: Settings, *, detector: Detector | None = None, hooks: Hooks | None = None
) -> Worker:
    """A worker on `settings.transport`, ready to `run()`. Loads the shipped (or configured)
    model when no detector is given; raises FatalError for a bad config or a tampered model."""
    from consumers.transports.registry import open_transport, transport
    from services.storage import AudioStorage
    from services.store import open_store

    if detector is None:
        from services.detector import load_detector

        detector = load_detector(settings.model_path, device=settings.device, threads=settings.torch_threads)
    if hooks is None:
        hooks = PipelineHooks.for_detector(detector, max_windows=settings.batch.max_windows)
    store = open_store(settings.store.url, settings.store.ttl_seconds)
    revoke_handlers: list[Callable[[list[tuple[str, int]]], None]] = []

    def on_revoke(partitions: list[tuple[str, int]]) -> None:
        for handler in revoke_handlers:
            handler(partitions)

    rebalances = transport(settings.transport).rebalances
    options: dict[str, Any] = {"on_revoke": on_revoke} if rebalances else {}
    source, sink = open_transport(settings, **options)
    storage = AudioStorage(settings.storage)
    pipeline = Pipeline(
        settings,
        source=source,
        sink=sink,
        detector=detector,
        storage=storage,
        store=store,
        # the crash-loop quarantine counts attempts in the same store (consumers.quarantine)
        attempts=store,
        dead_letters=dead_letter_writer(settings, str(detector.meta.version), storage),
        breaker=DlqBreaker(settings.dlq),
        hooks=hooks,
    )
    worker = Worker(pipeline)
    revoke_handlers.append(worker.on_revoke)
    return worker


def dead_letter_writer(settings: Settings, model_version: str, storage: AudioStorage) -> DeadLetterWriter:
    """The worker's dead-letter writer: a dead letter always fits its DLQ, a payload over the
    transport's record limit goes to the tenant's dead-letter area (`dlq.payload_uri`)."""
    from consumers.transports.registry import transport
    from services.storage import DeadLetterPayloads

    return DeadLetterWriter(
        worker_id=settings.worker_id,
        model_version=model_version,
        transport=settings.transport,
        max_record_bytes=transport(settings.transport).max_record_bytes(settings),
        payloads=DeadLetterPayloads(storage, settings.dlq.payload_uri) if settings.dlq.payload_uri else None,
        prefix_bytes=settings.dlq.payload_prefix_bytes,
        retry=settings.retry,
    )


def load_serving_detector(
    settings: Settings, heartbeat: Heartbeat, readiness: Readiness, *, scorer: str = "model"
) -> PipelineHooks:
    """Load the model (or, for scorer "null", the null scorer), run one warm-up inference, and
    build the worker's metric hooks (`hooks.detector` is the loaded model); readiness says how
    far it got."""
    import numpy as np

    from services.detector import load_detector
    from services.detector.null import load_null_scorer
    from services.metrics import set_worker_info

    detector: Detector
    if scorer == "null":
        detector = load_null_scorer(settings.model_path)
    else:
        detector = load_detector(settings.model_path, device=settings.device, threads=settings.torch_threads)
    readiness.set(model_loaded=True)
    # the first forward pass pays for allocator and kernel setup; pay it before traffic
    warm = np.zeros((1, detector.meta.window_samples), dtype=np.float32)
    detector.score_windows(warm)
    detector.speech(warm)  # the speech check's first call pays for its own setup too
    readiness.set(warmed_up=True)
    set_worker_info(
        settings.worker_id, str(detector.meta.version), transport=settings.transport, device=detector.device
    )
    return PipelineHooks.for_detector(
        detector, heartbeat=heartbeat, readiness=readiness, max_windows=settings.batch.max_windows
    )
