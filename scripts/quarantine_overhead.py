"""What the crash-loop quarantine costs a worker: the whole pipeline with the constant scorer on
the in-memory transport, quarantine off (`store.quarantine_after = 0`) and on (2), interleaved
pair by pair, on a SQLite file or a Redis store. Prints arrivals/s per run and min/median/max
per setting, then the store calls themselves (the verdict lookup and store every arrival
already pays, next to the quarantine's claim and clear of a whole turn); asserts nothing.

    .venv/bin/python scripts/quarantine_overhead.py --store sqlite --arrivals 1000 --pairs 3
    .venv/bin/python scripts/quarantine_overhead.py --store redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumers.tenancy import kafka_topic  # noqa: E402
from consumers.transports.memory import MemoryBroker, forget_broker, register_broker  # noqa: E402
from tests.support.memory import ConstantDetector, Uploads, build_memory_worker, drive, memory_settings  # noqa: E402

TENANT = "bench"


def one_run(store: str, after: int, arrivals: int, root: Path) -> float:
    name = f"q-{uuid.uuid4().hex[:8]}"
    broker = register_broker(name, MemoryBroker())
    try:
        for kind in ("arrivals", "verdicts", "dlq"):
            broker.create_topic(kafka_topic(kind, TENANT))
        uploads = Uploads(broker, root, seconds=0.5)
        uri, data = uploads.clip(TENANT, "clip.wav")
        from services.platform import arrival_for

        for i in range(arrivals):
            key = f"{TENANT}:{uuid.uuid4().hex}"
            uploads.raw(TENANT, arrival_for(TENANT, uri, data, key=key, content_id=f"c{i}"), key=key.encode())
        url = f"sqlite:///{root / f'{name}.db'}" if store == "sqlite" else store
        settings = memory_settings(
            name,
            [TENANT],
            root,
            store={"url": url, "quarantine_after": after},
            batch={"max_windows": 32, "max_wait_ms": 5, "adaptive": False},
        )
        worker = build_memory_worker(settings, broker, ConstantDetector())
        started = time.perf_counter()
        try:
            drive(worker, lambda: worker.pipeline.stats.acked >= arrivals, timeout=600)
        finally:
            took = time.perf_counter() - started
            worker.shutdown()
        return arrivals / took
    finally:
        forget_broker(name)


def store_calls(store_arg: str, root: Path, rounds: int = 5, calls: int = 200) -> None:
    from services.store import open_store

    url = f"sqlite:///{root / 'calls.db'}" if store_arg == "sqlite" else store_arg
    store = (
        open_store(url, key_prefix=f"qo-{uuid.uuid4().hex[:8]}")
        if url.startswith("redis")
        else open_store(url)
    )
    verdict = b"x" * 900

    def per_arrival() -> None:
        key = uuid.uuid4().hex
        store.get(TENANT, key)
        store.put_if_absent(TENANT, key, verdict)

    def turn(n: int) -> None:
        pairs = [(TENANT, uuid.uuid4().hex) for _ in range(n)]
        store.claim_attempts(pairs)
        store.clear_attempts(pairs)

    cases = {
        "get + put_if_absent (every arrival, already)": per_arrival,
        "claim + clear, a turn of 1": lambda: turn(1),
        "claim + clear, a turn of 32": lambda: turn(32),
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):  # interleaved, so a busy moment hits every case
        for name, fn in cases.items():
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            timings[name].append((time.perf_counter() - started) / calls * 1e6)
    for name, values in timings.items():
        print(
            f"{name}: min {min(values):.0f} / median {statistics.median(values):.0f} / "
            f"max {max(values):.0f} us per call ({rounds} rounds of {calls})"
        )
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite", help="sqlite, or a redis:// URL")
    parser.add_argument("--arrivals", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--calls-only", action="store_true", help="only time the store calls")
    args = parser.parse_args()
    if args.calls_only:
        with tempfile.TemporaryDirectory() as tmp:
            store_calls(args.store, Path(tmp))
        return 0
    rates: dict[int, list[float]] = {0: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            order = (0, 2) if pair % 2 == 0 else (2, 0)
            for after in order:
                rate = one_run(args.store, after, args.arrivals, Path(tmp))
                rates[after].append(rate)
                print(f"pair {pair + 1}: quarantine_after={after}: {rate:.0f} arrivals/s", flush=True)
        store_calls(args.store, Path(tmp))
    for after, values in rates.items():
        label = "off (0)" if after == 0 else f"on ({after})"
        print(
            f"quarantine {label}: min {min(values):.0f} / median {statistics.median(values):.0f} / "
            f"max {max(values):.0f} arrivals/s over {len(values)} runs of {args.arrivals}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
