"""ScoreBatches: an idle scorer takes what is queued at once; the deadline only holds a batch
back while the scorer is busy."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np

from consumers.batching import BatchPolicy, MicroBatcher
from consumers.steps import ScoreBatches
from consumers.transport import Message
from consumers.work import Work
from schemas import AudioArrival


class Collect:
    def __init__(self) -> None:
        self.items: list[Work] = []

    def submit(self, work: Work) -> None:
        self.items.append(work)

    def poll(self) -> None: ...

    def pending(self) -> int:
        return 0


def _work(key: str) -> Work:
    arrival = AudioArrival(
        event_id=key,
        idempotency_key=key,
        tenant_id="t1",
        content_id=key,
        audio_uri=f"file:///{key}.wav",
        sha256=hashlib.sha256(key.encode()).hexdigest(),
        byte_size=1,
        submitted_at=datetime.now(UTC),
    )
    message = Message(token=key, tenant="t1", topic="arrivals", value=b"")
    return Work(message=message, admitted_at=0.0, arrival=arrival, windows=np.zeros((1, 4), np.float32))


def _steps(release: threading.Event, now: list[float]) -> tuple[ScoreBatches, Collect, ThreadPoolExecutor]:
    def score(windows: np.ndarray) -> np.ndarray:
        release.wait(10)
        return np.zeros(len(windows), np.float32)

    executor = ThreadPoolExecutor(1)
    # a long deadline: any batch taken before it ran out was taken because the scorer was idle
    batcher: MicroBatcher[Work] = MicroBatcher(
        BatchPolicy(max_windows=8, max_audio_seconds=1e9, max_wait_seconds=60.0), clock=lambda: now[0]
    )
    out = Collect()
    step = ScoreBatches(
        out, dead_letter=Collect(), batcher=batcher, executor=executor, score=score,
        window_seconds=4.0, clock=lambda: now[0],
    )
    return step, out, executor


def test_an_idle_scorer_takes_one_queued_item_at_once() -> None:
    release, now = threading.Event(), [0.0]
    release.set()
    step, out, executor = _steps(release, now)
    step.submit(_work("a"))
    step.poll()
    assert step.pending() == 1 and len(step._batcher) == 0  # running, not waiting for the deadline
    step.join(5)
    assert [w.arrival.idempotency_key for w in out.items if w.arrival] == ["a"]
    executor.shutdown()


def test_a_busy_scorer_lets_the_next_batch_fill_until_its_deadline() -> None:
    release, now = threading.Event(), [0.0]
    step, out, executor = _steps(release, now)
    step.submit(_work("a"))
    step.poll()  # "a" runs and blocks in the scorer
    for key in ("b", "c"):
        step.submit(_work(key))
    step.poll()
    assert len(step._batcher) == 2  # partial, scorer busy, deadline not reached: keeps filling
    now[0] = 61.0
    step.poll()
    assert len(step._batcher) == 2  # deadline passed, but only a full batch queues behind a running one
    release.set()
    step.join(5)
    assert sorted(w.arrival.idempotency_key for w in out.items if w.arrival) == ["a", "b", "c"]
    executor.shutdown()
