"""Shadow scoring: a challenger scores what the champion scored, and nobody downstream sees it.

After each batch the champion scored, `ShadowScorer.offer` picks the uploads in the tenant's
share (a stable hash of the idempotency key, so the same uploads are picked on every worker and
re-delivery), and scores their windows with the challenger on a thread of its own. The records
(champion verdict beside challenger verdict, seconds per window of each) go to `record`, which
writes them to an internal table; never to a verdict topic.

The cost is bounded: at most `max_pending` shadow batches wait or run; beyond that a batch is
skipped and counted (`skipped`), so shadow work never holds up the customer path and is shed
first under backpressure. Nothing a shadow batch does (a scoring error, the table down) reaches
the pipeline: it is logged and counted (`failed`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from consumers.ports import Detector
from consumers.work import Work

__all__ = ["ShadowScorer", "in_share"]

log = logging.getLogger("audioguard.shadow")


def in_share(key: str, share: float) -> bool:
    """Whether the upload with idempotency key `key` is in a share in [0, 1]; stable."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return bucket < share


class ShadowScorer:
    def __init__(
        self,
        challenger: Detector,
        *,
        record: Callable[[list[dict[str, Any]]], None],
        executor: Executor,
        share: Callable[[str], float] = lambda tenant: 1.0,
        max_pending: int = 2,
        worker_id: str = "",
    ) -> None:
        self.challenger = challenger
        self._record = record
        self._executor = executor
        self._share = share
        self._max_pending = max_pending
        self._worker_id = worker_id
        self._lock = threading.Lock()
        self._pending = 0
        self.scored = 0
        self.skipped = 0
        self.failed = 0

    def offer(self, batch: list[Work], champion_seconds: float) -> None:
        """Called on the pipeline's loop with a batch the champion scored; never blocks, never raises."""
        picked = [
            w
            for w in batch
            if w.arrival is not None
            and w.scores is not None
            and w.windows is not None
            and in_share(w.arrival.idempotency_key, self._share(w.tenant))
        ]
        if not picked:
            return
        with self._lock:
            if self._pending >= self._max_pending:
                self.skipped += len(picked)
                return
            self._pending += 1
        windows = sum(len(w.windows) for w in batch if w.windows is not None) or 1
        try:
            self._executor.submit(self._run, picked, champion_seconds / windows)
        except RuntimeError:  # the executor is shut down: the worker is stopping
            with self._lock:
                self._pending -= 1

    def _run(self, batch: list[Work], champion_per_window: float) -> None:
        try:
            items = [w.windows for w in batch if w.windows is not None]
            started = time.perf_counter()
            scores = self.challenger.score_windows(np.concatenate(items, axis=0))
            per_window = (time.perf_counter() - started) / max(1, len(scores))
            rows: list[dict[str, Any]] = []
            start = 0
            for work in batch:
                assert work.windows is not None and work.scores is not None and work.arrival is not None
                mine = scores[start : start + len(work.windows)]
                start += len(work.windows)
                champion = work.scored_by
                theirs = champion.decide(work.scores) if champion is not None else None
                ours = self.challenger.decide(mine)
                rows.append(
                    {
                        "tenant": work.tenant,
                        "idempotency_key": work.arrival.idempotency_key,
                        "content_id": work.arrival.content_id,
                        "champion_version": str(champion.meta.version) if champion is not None else "",
                        "champion_label": theirs.label if theirs is not None else "",
                        "champion_score": float(theirs.score) if theirs is not None else 0.0,
                        "challenger_version": str(self.challenger.meta.version),
                        "challenger_label": ours.label,
                        "challenger_score": float(ours.score),
                        "windows": len(work.windows),
                        "champion_seconds_per_window": champion_per_window,
                        "challenger_seconds_per_window": per_window,
                        "worker_id": self._worker_id,
                    }
                )
            self._record(rows)
            with self._lock:
                self.scored += len(rows)
        except Exception as exc:  # noqa: BLE001 - shadow work never reaches the customer path
            with self._lock:
                self.failed += len(batch)
            log.warning(
                "shadow batch failed", extra={"error": f"{type(exc).__name__}: {exc}", "items": len(batch)}
            )
        finally:
            with self._lock:
                self._pending -= 1

    def pending(self) -> int:
        with self._lock:
            return self._pending
