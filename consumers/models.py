"""The model slot: which detector scores the next batch.

The pipeline reads the slot once per batch (consumers.steps.ScoreBatches) and once per fetched
upload (to cut windows); a batch is scored and decided by the one detector it was handed, and
the verdict names that detector's model. `swap` replaces the detector between two batches: a
batch already running finishes on the old one, so nothing is scored by a half-loaded model.

A swap must keep the window geometry (sample rate, window length, minimum tail): windows cut
for the old model are already queued. A new geometry is refused (it needs a restart).
"""

from __future__ import annotations

import threading

from consumers.ports import Detector

__all__ = ["ModelSlot", "same_geometry"]


def same_geometry(a: Detector, b: Detector) -> bool:
    return (a.meta.sample_rate, a.meta.window_samples, a.meta.min_tail_seconds) == (
        b.meta.sample_rate,
        b.meta.window_samples,
        b.meta.min_tail_seconds,
    )


class ModelSlot:
    """Holds the serving detector. `current()` is lock-free to read; `swap` is thread-safe."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        self._lock = threading.Lock()
        self.swaps = 0

    def current(self) -> Detector:
        return self._detector

    def swap(self, detector: Detector) -> bool:
        """Serve `detector` from the next batch on; False (nothing changes) when its window
        geometry differs from the serving one."""
        with self._lock:
            if not same_geometry(self._detector, detector):
                return False
            self._detector = detector
            self.swaps += 1
            return True
