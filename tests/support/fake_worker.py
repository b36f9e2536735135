"""A stand-in child for the supervisor's tests: behaves like a worker process in the ways the
supervisor can see (exit codes, SIGTERM drain, the health port), in milliseconds.

    python -m tests.support.fake_worker KIND MARKER_DIR

KIND: drain (run until SIGTERM, then exit 0), crash_once (exit 1 the first time, then drain),
crash (exit 1 at once, always), fatal (exit 3 after a moment), stubborn (ignore SIGTERM).
Every start and every SIGTERM leaves a file in MARKER_DIR; with AUDIOGUARD_METRICS_PORT set it
serves /healthz, /readyz and /metrics there (a counter and the worker id as labels).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def main() -> int:
    kind, markers = sys.argv[1], Path(sys.argv[2])
    index = os.environ.get("AUDIOGUARD_WORKER_ID", "x").rsplit("-", 1)[-1]
    starts = len(list(markers.glob(f"start-{index}-*")))
    (markers / f"start-{index}-{starts}-{os.getpid()}").write_text(
        os.environ.get("AUDIOGUARD_TORCH_THREADS", "")
    )
    stop = threading.Event()

    def on_term(*_: object) -> None:
        (markers / f"term-{index}-{os.getpid()}").write_text("")
        if kind != "stubborn":
            stop.set()

    signal.signal(signal.SIGTERM, on_term)
    port = os.environ.get("AUDIOGUARD_METRICS_PORT")
    if port:
        from prometheus_client import Counter

        from services.health import Readiness, start_health_server

        Counter("fake_work", "work done", ["worker_id"]).labels(os.environ["AUDIOGUARD_WORKER_ID"]).inc(3)
        ready = Readiness(model_loaded=True, warmed_up=True, transport_connected=True)
        start_health_server(
            int(port), host=os.environ["AUDIOGUARD_METRICS_HOST"], ready=ready, alive=lambda: True
        )
    if kind == "crash" or (kind == "crash_once" and starts == 0):
        return 1
    if kind == "fatal":
        time.sleep(0.3)
        return 3
    while not stop.wait(0.05):
        pass
    time.sleep(0.1)  # "drain"
    return 0


if __name__ == "__main__":
    sys.exit(main())
