"""Assemble a worker from settings: the one place that picks each collaborator of the pipeline.

`consumers.runner` is a generic loop over steps and knows only the seams of
`consumers.ports`; this module chooses the transport, storage, verdict store, detector,
dead-letter writer and circuit breaker, the way Arroyo's strategy factory builds its chain.
The CLI, the demo, the bench and the tests build workers here.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.instrumentation import PipelineHooks
from consumers.models import ModelSlot
from consumers.ports import Detector, Hooks
from consumers.runner import Pipeline, Worker
from dlq.breaker import DlqBreaker
from dlq.envelope import DeadLetterWriter
from services.errors import RetryableError
from services.health import Heartbeat, Readiness
from services.settings import Settings

if TYPE_CHECKING:
    from consumers.shadow import ShadowScorer
    from services.registry import AliasWatcher, ModelVersion
    from services.storage import AudioStorage

__all__ = [
    "build_worker",
    "build_worker_when_reachable",
    "dead_letter_writer",
    "load_model",
    "load_serving_detector",
    "shadow_scorer",
    "watch_model",
]

log = logging.getLogger("audioguard.worker")


def _load_directory(settings: Settings, directory: Path | None, scorer: str) -> Detector:
    if scorer == "null":
        from services.detector.null import load_null_scorer

        return load_null_scorer(directory)
    from services.detector import load_detector

    return load_detector(
        directory, device=settings.device, threads=settings.torch_threads, runtime=settings.runtime
    )


def _load_version(settings: Settings, directory: Path, version: ModelVersion, scorer: str) -> Detector:
    detector = _load_directory(settings, directory, scorer)
    # verdicts name the registered model and version (the artifact's own version, plus +rN)
    name = detector.meta.name if scorer == "null" else version.name
    detector.meta = replace(detector.meta, name=name, version=version.serving_version)  # type: ignore[misc]
    reference = version.eval_results.get("drift_reference")
    if isinstance(reference, dict) and isinstance(reference.get("scores"), list):
        from services.metrics import set_drift_reference

        if set_drift_reference(version.serving_version, reference["scores"]):
            log.info("drift reference from the registry: %d scores", len(reference["scores"]))
    return detector


def load_model(settings: Settings, *, scorer: str = "model") -> Detector:
    """The configured model: `model_path` None (the shipped artifact), a directory, or
    `models:/<name>@<alias>` / `models:/<name>/<version>` resolved in the registry (its sha256
    verified on fetch, the manifest's checksum verified on load, as for a directory)."""
    from services.registry import open_registry, parse_model_uri

    ref = parse_model_uri(settings.model_path) if settings.model_path else None
    if ref is None:
        return _load_directory(settings, Path(settings.model_path) if settings.model_path else None, scorer)
    registry = open_registry(settings.registry.uri, cache_dir=settings.registry.cache_dir)
    version = registry.resolve(ref)
    return _load_version(settings, registry.fetch(version.name, version.version), version, scorer)


def shadow_scorer(settings: Settings, *, scorer: str = "model") -> ShadowScorer | None:
    """The challenger of `shadow.model`, loaded and warmed, recording into the `shadow_scores`
    table of `database.url` (migrated now, so a bad URL fails at start); None without
    `shadow.model`. Raises FatalError("bad_config") when there is no database."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from consumers.shadow import ShadowScorer
    from services.errors import FatalError
    from services.registry import ShadowTable

    if not settings.shadow.model:
        return None
    if not settings.database.url:
        raise FatalError(
            "bad_config", "shadow.model needs database.url: shadow results go to its shadow_scores table"
        )
    table = ShadowTable(settings.database.url)
    table.migrate()
    challenger = load_model(settings.model_copy(update={"model_path": settings.shadow.model}), scorer=scorer)
    challenger.score_windows(np.zeros((1, challenger.meta.window_samples), dtype=np.float32))
    shares = dict(settings.shadow.tenant_share)
    return ShadowScorer(
        challenger,
        record=table.write,
        executor=ThreadPoolExecutor(1, thread_name_prefix="shadow"),
        share=lambda tenant: shares.get(tenant, settings.shadow.share),
        max_pending=settings.shadow.max_pending_batches,
        worker_id=settings.worker_id,
    )


def watch_model(worker: Worker, settings: Settings, *, scorer: str = "model") -> AliasWatcher | None:
    """Hot swap (services.registry.AliasWatcher) for a worker serving `models:/<name>@<alias>`:
    started, polling every `registry.poll_seconds`; None for a path, a numbered version or
    poll_seconds 0. The caller stops it when the worker stops."""
    import numpy as np

    from services.metrics import set_worker_info
    from services.registry import AliasWatcher, open_registry, parse_model_uri, registry_version_of

    ref = parse_model_uri(settings.model_path) if settings.model_path else None
    if ref is None or ref.alias is None or settings.registry.poll_seconds <= 0:
        return None
    slot = worker.pipeline.models

    def load(directory: Path, version: ModelVersion) -> Detector:
        detector = _load_version(settings, directory, version, scorer)
        # warmed beside the serving model: the first forward pass pays for allocator set-up here
        detector.score_windows(np.zeros((1, detector.meta.window_samples), dtype=np.float32))
        return detector

    def install(detector: Detector, version: ModelVersion) -> bool:
        if not slot.swap(detector):
            log.error(
                "new model version has another window geometry; it needs a restart, not a hot swap",
                extra={"model": str(ref), "version": version.version},
            )
            return False
        version_text = str(detector.meta.version)
        device = str(detector.device)
        set_worker_info(settings.worker_id, version_text, transport=settings.transport, device=device)
        return True

    serving = registry_version_of(str(slot.current().meta.version)) or 0
    registry = open_registry(settings.registry.uri, cache_dir=settings.registry.cache_dir)
    every = settings.registry.poll_seconds
    watcher = AliasWatcher(registry, ref, serving=serving, load=load, install=install, poll_seconds=every)
    return watcher.start()


def build_worker(
    settings: Settings,
    *,
    detector: Detector | None = None,
    hooks: Hooks | None = None,
    shadow: ShadowScorer | None = None,
) -> Worker:
    """A worker on `settings.transport`, ready to `run()`. Loads the shipped (or configured)
    model when no detector is given; raises FatalError for a bad config or a tampered model."""
    from consumers.transports.registry import open_transport, transport
    from services.storage import AudioStorage
    from services.store import open_store

    if detector is None:
        detector = load_model(settings)
    if hooks is None:
        hooks = PipelineHooks.for_detector(detector, max_windows=settings.batch.max_windows)
    if shadow is None:
        shadow = shadow_scorer(settings)
    store = open_store(settings.store.url, settings.store.ttl_seconds)
    revoke_handlers: list[Callable[[list[tuple[str, int]]], None]] = []

    def on_revoke(partitions: list[tuple[str, int]]) -> None:
        for handler in revoke_handlers:
            handler(partitions)

    rebalances = transport(settings.transport).rebalances
    options: dict[str, Any] = {"on_revoke": on_revoke} if rebalances else {}
    source, sink = open_transport(settings, **options)
    storage = AudioStorage(settings.storage)
    # the serving model, replaced between batches by a hot swap (watch_model)
    models = ModelSlot(detector)
    pipeline = Pipeline(
        settings,
        source=source,
        sink=sink,
        detector=detector,
        storage=storage,
        store=store,
        # the crash-loop quarantine counts attempts in the same store (consumers.quarantine)
        attempts=store,
        dead_letters=dead_letter_writer(
            settings, str(detector.meta.version), storage, current=lambda: str(models.current().meta.version)
        ),
        breaker=DlqBreaker(settings.dlq),
        hooks=hooks,
        shadow=shadow,
        models=models,
    )
    worker = Worker(pipeline)
    revoke_handlers.append(worker.on_revoke)
    return worker


def build_worker_when_reachable(
    settings: Settings,
    *,
    stop: threading.Event,
    heartbeat: Heartbeat,
    detector: Detector | None,
    hooks: Hooks,
) -> Worker | None:
    """`build_worker`, waiting for a transport or verdict store that is not reachable yet.

    A worker is often started before (or during an outage of) its broker, stream or store; a
    Kafka consumer would simply wait for the broker, so every transport waits the same way:
    backoff doubling from 1 s up to 15 s, alive (heartbeat) but not ready (/readyz lists
    transport_connected), one structured warning per attempt. A bad configuration or a tampered
    model is a FatalError and is raised at once. Returns None when `stop` is set while waiting.
    """
    pause = 1.0
    for attempt in itertools.count(1):
        try:
            return build_worker(settings, detector=detector, hooks=hooks)
        except RetryableError as error:
            log.warning(
                "a dependency is not reachable at start; retrying",
                extra={
                    "attempt": attempt,
                    "retry_in_seconds": pause,
                    "reason": error.reason,
                    "error": str(error),
                },
            )
        heartbeat.beat()
        if stop.wait(pause):
            return None
        pause = min(pause * 2, 15.0)  # under the 30 s liveness age
    raise AssertionError("unreachable")  # pragma: no cover - itertools.count never ends


def dead_letter_writer(
    settings: Settings,
    model_version: str,
    storage: AudioStorage,
    *,
    current: Callable[[], str] | None = None,
) -> DeadLetterWriter:
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
        current_model_version=current,
    )


def load_serving_detector(
    settings: Settings, heartbeat: Heartbeat, readiness: Readiness, *, scorer: str = "model"
) -> PipelineHooks:
    """Load the model (or, for scorer "null", the null scorer), run one warm-up inference, and
    build the worker's metric hooks (`hooks.detector` is the loaded model); readiness says how
    far it got."""
    import numpy as np

    from services.metrics import set_worker_info

    detector = load_model(settings, scorer=scorer)
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
