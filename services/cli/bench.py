"""`audioguard bench`: arguments of the benchmark (services.tools.bench does the work)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.tools.bench import BenchConfig, plot, report, run_bench
from services.tools.bench_report import write_report


def add_parser(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmark each stage, the pipeline end to end, a naive consumer and an open-loop curve",
        description="Stages alone, end to end on the embedded broker at saturation (as a ratio to the "
        "slowest stage), a naive consumer for comparison, an open-loop latency-throughput curve up to "
        "the breaking point (table + PNG) and a sizing recommendation. Prints numbers; never asserts.",
    )
    bench.add_argument("--smoke", action="store_true", help="a tiny run (well under a minute) for CI")
    bench.add_argument("--bootstrap-servers", help="use this Kafka instead of starting the embedded broker")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bench.add_argument(
        "--scorer",
        choices=("model", "null"),
        default="model",
        help="null: constant scores at no cost, to measure the framework's own ceiling",
    )
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the worker's)")
    bench.add_argument("--clip-seconds", type=float, default=None, help="length of each test upload")
    bench.add_argument("--events", type=int, default=None, help="backlog size of each saturation run")
    bench.add_argument("--phase-seconds", type=float, default=None, help="length of each open-loop step")
    bench.add_argument("--repeats", type=int, default=None, help="interleaved rounds (best of each kind)")
    bench.add_argument(
        "--fixed-batches",
        type=lambda text: tuple(int(n) for n in text.split(",") if n),
        default=None,
        help="comma-separated fixed batch sizes for the saturation runs (default 1,4,8,16,32,64)",
    )
    bench.add_argument(
        "--ceiling",
        action="store_true",
        help="stages, saturation runs and the same-rate point only: no open-loop curve, no cold start",
    )
    bench.add_argument("--tenants", type=int, default=3, help="tenants sharing the open-loop load")
    bench.add_argument("--target-rate", type=float, default=100.0, help="sizing: uploads per second")
    bench.add_argument("--target-p99", type=float, default=2.0, help="sizing: end-to-end p99 in seconds")
    bench.add_argument(
        "--only",
        choices=("processes", "same-rate"),
        help="processes: only part f (forward alone by threads, worker vs worker --processes N); "
        "same-rate: only the naive consumer and the pipeline at one open-loop rate, --repeats "
        "interleaved pairs (low-load latency)",
    )
    bench.add_argument(
        "--rate",
        type=float,
        default=None,
        help="--only same-rate: uploads/s offered (default: 0.7x the naive consumer's measured capacity)",
    )
    bench.add_argument(
        "--process-repeats", type=int, default=None, help="part f: interleaved rounds (0: skip part f)"
    )
    bench.add_argument("--process-events", type=int, default=None, help="part f: backlog size of each run")
    bench.add_argument(
        "--overload-seconds",
        type=float,
        default=None,
        help="seconds of 10x flood on a worker process for its RSS (default 20; 0: skip)",
    )
    bench.add_argument("--out", type=Path, default=Path("bench-out"), help="where JSON, PNG and report.md go")
    bench.set_defaults(handler=_bench_cmd)


def _bench_cmd(args: argparse.Namespace) -> int:
    from services.logs import configure_logging

    configure_logging("WARNING", "text")
    options: dict[str, Any] = {
        "bootstrap_servers": args.bootstrap_servers,
        "device": args.device,
        "scorer": args.scorer,
        "threads": args.threads,
        "tenants": args.tenants,
        "target_rate": args.target_rate,
        "target_p99": args.target_p99,
        "out": args.out,
        "ceiling_only": args.ceiling,
        "only": args.only,
        "rate": args.rate,
    }
    if args.fixed_batches is not None:
        options["fixed_batch_windows"] = args.fixed_batches
    names = ("clip_seconds", "events", "phase_seconds", "repeats", "process_repeats", "process_events")
    for name in (*names, "overload_seconds"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    config = BenchConfig.smoke_run(**options) if args.smoke else BenchConfig(**options)
    started = time.monotonic()
    result = run_bench(config)
    report(result)
    config.out.mkdir(parents=True, exist_ok=True)
    stamp = "smoke" if config.smoke else datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if config.only:
        stamp = f"{config.only}-{stamp}"
    # the plot shows parts b-d
    png = plot(result, config.out / f"bench-{stamp}.png") if result.curve else None
    data = asdict(result)
    data["ratios"] = result.ratios()
    data["forward"] = {str(k): v for k, v in result.forward.items()}
    data["forward_threads"] = {str(k): v for k, v in result.forward_threads.items()}
    data["process_summary"] = result.process_summary()
    (config.out / f"bench-{stamp}.json").write_text(json.dumps(data, indent=2, default=str))
    # the whole run as one page: docs/BENCHMARKS.md is regenerated from it (see its first section)
    markdown = write_report(result, config, time.monotonic() - started, config.out / "report.md")
    wrote = f"{png}, " if png is not None else ""
    json_path = config.out / f"bench-{stamp}.json"
    print(f"wrote {wrote}{json_path} and {markdown} in {time.monotonic() - started:.1f}s")
    return 0
