"""Shadow scoring's cost: drain N uploads through the in-process pipeline with the shipped model,
shadow off and on (the challenger is the shipped model again), interleaved; prints uploads/s
and how many uploads the shadow scored or skipped. Prints numbers, asserts nothing.

    .venv/bin/python scripts/shadow_cost.py [N]
"""

import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from consumers.shadow import ShadowScorer  # noqa: E402 - after the path set-up
from consumers.tenancy import kafka_topic  # noqa: E402
from consumers.transports.memory import MemoryBroker, forget_broker, register_broker  # noqa: E402
from services.detector import load_detector  # noqa: E402
from tests.support.memory import Uploads, build_memory_worker, drive, memory_settings, records  # noqa: E402

T = "acme"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 150
champion = load_detector(device="cpu", threads=1)
challenger = load_detector(device="cpu", threads=1)
for d in (champion, challenger):
    d.score_windows(np.zeros((1, d.meta.window_samples), dtype=np.float32))


def run(mode):
    name = f"b-{uuid.uuid4().hex[:6]}"
    broker = register_broker(name, MemoryBroker())
    for k in ("arrivals", "verdicts", "dlq"):
        broker.create_topic(kafka_topic(k, T))
    tmp = Path(tempfile.mkdtemp())
    s = memory_settings(
        name, [T], tmp / "audio", batch={"max_windows": 32, "max_wait_ms": 20, "adaptive": False}
    )
    rows = []
    pool = ThreadPoolExecutor(1)
    shadow = (
        None if mode == "off" else ShadowScorer(challenger, record=rows.extend, executor=pool, max_pending=2)
    )
    w = build_memory_worker(s, broker, champion, shadow=shadow)
    up = Uploads(broker, tmp / "audio", seconds=4.0)
    for i in range(N):
        up.arrival(T, f"u{i}", seed=i)
    t = time.perf_counter()
    drive(w, lambda: len(records(broker, "verdicts", T)) == N, timeout=600)
    el = time.perf_counter() - t
    pool.shutdown(wait=True)
    w.pipeline.close()
    forget_broker(name)
    extra = "" if shadow is None else f" shadow scored={shadow.scored} skipped={shadow.skipped}"
    print(f"{mode}: {N} uploads (4 s each) in {el:.2f} s = {N / el:.1f} uploads/s{extra}", flush=True)


for mode in ("off", "on") * 3:
    run(mode)
