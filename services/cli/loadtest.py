"""`audioguard loadtest noisy-neighbour|overload`: arguments of the load tests (services.tools.loadtest)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from services.tools.loadtest import noisy_neighbour, overload


def add_parser(subparsers: Any) -> None:
    loadtest = subparsers.add_parser(
        "loadtest",
        help="measure fairness and backpressure with real worker processes (prints numbers)",
        description="Runs `audioguard worker` as a child process on a real broker (the embedded one "
        "unless --bootstrap-servers is given) and prints the measured numbers.",
    )
    scenarios = loadtest.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    nn = scenarios.add_parser(
        "noisy-neighbour",
        help="tenant B's p50/p99 latency alone and while tenant A floods at 10x capacity",
    )
    nn.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    nn.add_argument("--b-rate", type=float, default=2.0, help="tenant B's arrivals per second (default 2)")
    ov = scenarios.add_parser(
        "overload", help="10x capacity sustained: resident memory, crashes, losses, lag in the broker"
    )
    ov.add_argument("--seconds", type=float, default=60.0, help="length of the flood (default 60)")
    ov.add_argument(
        "--warmup", type=float, default=10.0, help="seconds of the flood before memory counts (default 10)"
    )
    for parser in (nn, ov):
        parser.add_argument(
            "--worker-setting",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a worker setting as its AUDIOGUARD_ variable without the prefix, e.g. "
            "BATCH__MAX_WINDOWS=16 (repeatable)",
        )
        parser.add_argument("--flood-factor", type=float, default=10.0, help="A's rate / capacity (10)")
        parser.add_argument("--clip-seconds", type=float, default=2.0, help="audio per arrival (2.0)")
        parser.add_argument("--bootstrap-servers", help="use this broker instead of an embedded one")
        parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    nn.set_defaults(handler=_noisy_neighbour_cmd)
    ov.set_defaults(handler=_overload_cmd)


def _noisy_neighbour_cmd(args: argparse.Namespace) -> int:
    result = noisy_neighbour(
        seconds=args.seconds,
        b_rate=args.b_rate,
        flood_factor=args.flood_factor,
        clip_seconds=args.clip_seconds,
        bootstrap=args.bootstrap_servers,
        worker_settings=_worker_settings(args.worker_setting),
    )
    print(
        f"capacity {result.capacity_per_second:.1f} events/s; "
        f"A floods at {result.flood_rate_per_second:.0f}/s "
        f"({result.a_published} published, {result.a_verdicts_during_flood} scored); B at "
        f"{result.b_rate_per_second:g}/s\n"
        f"B alone:   p50 {result.b_alone_p50_ms:.0f} ms  p99 {result.b_alone_p99_ms:.0f} ms  "
        f"({result.b_alone_count} events)\n"
        f"B with A:  p50 {result.b_with_a_p50_ms:.0f} ms  p99 {result.b_with_a_p99_ms:.0f} ms  "
        f"({result.b_with_a_count} events)\n"
        f"p99 ratio {result.p99_ratio:.2f} (target <= 2.0); worker exit {result.worker_exit_code}; "
        f"arrivals the broker refused: {result.publish_errors or 'none'}"
    )
    if args.json:
        print(json.dumps(asdict(result) | {"p99_ratio": result.p99_ratio}))
    return 0


def _overload_cmd(args: argparse.Namespace) -> int:
    result = overload(
        seconds=args.seconds,
        warmup=args.warmup,
        flood_factor=args.flood_factor,
        clip_seconds=args.clip_seconds,
        bootstrap=args.bootstrap_servers,
        worker_settings=_worker_settings(args.worker_setting),
    )
    print(
        f"capacity {result.capacity_per_second:.1f} events/s; flood {result.flood_rate_per_second:.0f}/s "
        f"for {result.seconds:g} s: {result.published} published, {result.verdicts} verdicts, "
        f"{result.committed} committed, lag in the broker {result.lag_in_broker}, lost {result.lost}\n"
        f"resident memory after warm-up: {result.rss_after_warmup_min_mb:.0f}-"
        f"{result.rss_after_warmup_max_mb:.0f} MiB (at most {result.rss_deviation_pct:.1f}% from their "
        f"median; drift first->last third {result.rss_drift_pct:+.1f}%)\n"
        f"worker alive throughout: {result.worker_alive_throughout}, "
        f"exit {result.worker_exit_code}; arrivals the broker refused: {result.publish_errors or 'none'}"
    )
    if args.json:
        print(json.dumps(asdict(result)))
    return 0


def _worker_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--worker-setting wants NAME=VALUE, got {pair!r}")
        settings[name.removeprefix("AUDIOGUARD_")] = value
    return settings
