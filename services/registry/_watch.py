"""Hot swap: watch one alias and hand over a loaded, warmed model when it moves.

A daemon thread asks the registry every `poll_seconds` which version the alias points at. When
it changed, the thread fetches the artifact (checksum verified), loads it *beside* the serving
model, runs one warm-up batch, and only then calls `install(detector, version)`; the worker's
model slot switches between two batches. A version that fails to fetch, verify, load or warm is
logged and retried at the next poll; the serving model keeps serving and readiness never drops.

This module must never touch the pipeline itself: the swap is the caller's `install`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._model import ModelRef, ModelRegistry, ModelVersion

__all__ = ["AliasWatcher"]

log = logging.getLogger("audioguard.registry")


class AliasWatcher:
    def __init__(
        self,
        registry: ModelRegistry,
        ref: ModelRef,
        *,
        serving: int,
        load: Callable[[Path, ModelVersion], Any],
        install: Callable[[Any, ModelVersion], bool],
        poll_seconds: float = 5.0,
    ) -> None:
        self.registry = registry
        self.ref = ref
        self.serving = serving
        self._load = load
        self._install = install
        self._poll = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.failures = 0
        #: a version that failed to install is not retried until the alias moves again
        self._refused: int | None = None

    def check(self) -> bool:
        """One poll: True when a new version was installed. Never raises."""
        try:
            target = self.registry.resolve(self.ref)
        except Exception as exc:  # noqa: BLE001 - the registry being down never stops serving
            self.failures += 1
            log.warning("model alias poll failed", extra={"model": str(self.ref), "error": str(exc)})
            return False
        if target.version in (self.serving, self._refused):
            return False
        try:
            directory = self.registry.fetch(target.name, target.version)
            detector = self._load(directory, target)
        except Exception as exc:  # noqa: BLE001 - a bad candidate is logged, the old model serves on
            self.failures += 1
            log.error(
                "new model version failed to load; still serving the old one",
                extra={
                    "model": str(self.ref),
                    "version": target.version,
                    "serving": self.serving,
                    "error": str(exc),
                },
            )
            return False
        if not self._install(detector, target):
            self._refused = target.version
            return False
        log.info(
            "model swapped",
            extra={"model": str(self.ref), "from_version": self.serving, "to_version": target.version},
        )
        self.serving = target.version
        self._refused = None
        self.swaps += 1
        return True

    def start(self) -> AliasWatcher:
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._poll):
            self.check()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
