"""`audioguard loadtest noisy-neighbour|overload|partition-fairness|rolling-restart`: arguments of
the load tests (services.tools.loadtest)."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.tools.loadtest import (
    RollingRestartResult,
    noisy_neighbour,
    overload,
    partition_fairness,
    rolling_restart,
)


def add_parser(subparsers: Any) -> None:
    loadtest = subparsers.add_parser(
        "loadtest",
        help="measure fairness and backpressure with real worker processes (prints numbers)",
        description="Runs `audioguard worker` as a child process on a real broker (the embedded one "
        "unless --bootstrap-servers is given) and prints the measured numbers.",
    )
    scenarios = loadtest.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    api = scenarios.add_parser(
        "api",
        help="upload+wait through the HTTP API under locust: req/s, p50/p99, 200s vs 202/429/503, API memory",
        description="Starts the embedded broker, one `audioguard worker` and one `audioguard api serve` "
        "process, then runs locust headless on loopback at each --users count for --seconds. Needs "
        "database.url (PostgreSQL) and a shared verdict store (--store-url, default Redis on localhost).",
    )
    api.add_argument(
        "--users", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients per phase"
    )
    api.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    api.add_argument(
        "--clip-seconds", type=float, default=2.0, help="seconds of audio per upload (default 2)"
    )
    api.add_argument("--wait", type=int, default=20, help="Prefer: wait=N of each upload (default 20)")
    api.add_argument("--store-url", default="redis://127.0.0.1:6379/0", help="verdict store shared by both")
    api.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    api.set_defaults(handler=_api)
    nn = scenarios.add_parser(
        "noisy-neighbour",
        help="tenant B's p50/p99 latency alone and while tenant A floods at 10x capacity",
    )
    nn.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    nn.add_argument("--b-rate", type=float, default=2.0, help="tenant B's arrivals per second (default 2)")
    nn.add_argument(
        "--shared",
        action="store_true",
        help="both tenants on the shared arrivals topic audioguard.arrivals._shared (signed "
        "ag-tenant headers) instead of their own topics",
    )
    ov = scenarios.add_parser(
        "overload", help="10x capacity sustained: resident memory, crashes, losses, lag in the broker"
    )
    ov.add_argument("--seconds", type=float, default=60.0, help="length of the flood (default 60)")
    ov.add_argument(
        "--warmup", type=float, default=10.0, help="seconds of the flood before memory counts (default 10)"
    )
    pf = scenarios.add_parser(
        "partition-fairness",
        help="one tenant, several partitions, a backlog: how long each partition waits for verdicts",
    )
    pf.add_argument("--backlog", type=int, default=1500, help="arrivals published while stopped (1500)")
    pf.add_argument("--partitions", type=int, default=2, help="partitions of the tenant's topic (2)")
    rr = scenarios.add_parser(
        "rolling-restart",
        help="3 workers, a steady rate, each SIGTERMed and restarted in turn: p50/p99, longest gap",
    )
    rr.add_argument("--workers", type=int, default=3, help="workers in the group (3)")
    rr.add_argument("--partitions", type=int, default=6, help="partitions of the tenant's topic (6)")
    rr.add_argument("--rate", type=float, default=5.0, help="arrivals per second (5)")
    rr.add_argument("--baseline", type=float, default=20.0, help="seconds measured before the restarts (20)")
    rr.add_argument(
        "--interval", type=float, default=20.0, help="seconds after a worker is back before the next (20)"
    )
    rr.add_argument(
        "--assignment-strategy",
        default="range,cooperative-sticky",
        help="comma-separated kafka.assignment_strategy values, run in turn each round "
        "(default range,cooperative-sticky: before and after)",
    )
    rr.add_argument("--static-membership", action="store_true", help="group.instance.id per worker")
    rr.add_argument("--rounds", type=int, default=1, help="rounds of the strategies, interleaved (1)")
    for parser in (pf, rr):
        parser.add_argument(
            "--keep", type=Path, metavar="DIR", help="leave the workers' and the broker's logs under DIR"
        )
    for parser in (nn, ov, pf, rr):
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
    pf.set_defaults(handler=_partition_fairness_cmd)
    rr.set_defaults(handler=_rolling_restart_cmd)


def _noisy_neighbour_cmd(args: argparse.Namespace) -> int:
    result = noisy_neighbour(
        seconds=args.seconds,
        b_rate=args.b_rate,
        flood_factor=args.flood_factor,
        clip_seconds=args.clip_seconds,
        bootstrap=args.bootstrap_servers,
        worker_settings=_worker_settings(args.worker_setting),
        shared=args.shared,
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


def _partition_fairness_cmd(args: argparse.Namespace) -> int:
    result = partition_fairness(
        backlog=args.backlog,
        partitions=args.partitions,
        clip_seconds=args.clip_seconds,
        bootstrap=args.bootstrap_servers,
        worker_settings=_worker_settings(args.worker_setting),
        keep=args.keep,
    )
    print(
        f"backlog {result.backlog} over {result.partitions} partitions {result.per_partition}, "
        f"worked off in {result.drain_seconds:.1f} s\n"
        + "\n".join(
            f"partition {p}: longest wait for a verdict {result.longest_wait_s[p]:.1f} s "
            f"(the others got {result.others_during_wait[p]} verdicts meanwhile)"
            for p in range(result.partitions)
        )
        + f"\nleast share of the first half of the drain: {result.min_first_half_share:.2f} "
        f"(1.0 = in proportion to the backlog, 0 = starved); worker exit {result.worker_exit_code}\n"
        f"verdicts per partition per second: {result.timeline}"
    )
    if args.json:
        print(json.dumps(asdict(result)))
    return 0


def _rolling_restart_cmd(args: argparse.Namespace) -> int:
    strategies = [s.strip() for s in args.assignment_strategy.split(",") if s.strip()]
    results: dict[str, list[RollingRestartResult]] = {s: [] for s in strategies}
    for round_ in range(args.rounds):
        for strategy in strategies:
            result = rolling_restart(
                workers=args.workers,
                partitions=args.partitions,
                rate=args.rate,
                baseline=args.baseline,
                interval=args.interval,
                assignment_strategy=strategy,
                static_membership=args.static_membership,
                clip_seconds=args.clip_seconds,
                bootstrap=args.bootstrap_servers,
                worker_settings=_worker_settings(args.worker_setting),
                keep=args.keep,
            )
            results[strategy].append(result)
            print(
                f"round {round_ + 1} {strategy}{' static' if args.static_membership else ''}: "
                f"baseline p50 {result.baseline_p50_ms:.0f} ms p99 {result.baseline_p99_ms:.0f} ms "
                f"(longest gap {result.baseline_longest_gap_s:.1f} s, {result.baseline_count} events); "
                f"restarts p50 {result.restart_p50_ms:.0f} ms p99 {result.restart_p99_ms:.0f} ms "
                f"max {result.restart_max_ms:.0f} ms (longest gap without verdicts "
                f"{result.restart_longest_gap_s:.1f} s, {result.restart_count} events); partitions "
                f"revoked from running workers {result.revoked_from_survivors}; back holding partitions "
                f"{result.rejoin_seconds} s after SIGTERM; exits {result.exit_codes}",
                flush=True,
            )
            if args.json:
                print(json.dumps(asdict(result)), flush=True)
    for strategy, runs in results.items():
        p99 = [r.restart_p99_ms for r in runs]
        gap = [r.restart_longest_gap_s for r in runs]
        print(
            f"{strategy}: restart p99 min/median/max {min(p99):.0f}/{statistics.median(p99):.0f}/"
            f"{max(p99):.0f} ms; longest gap {min(gap):.1f}/{statistics.median(gap):.1f}/{max(gap):.1f} s"
        )
    return 0


def _worker_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--worker-setting wants NAME=VALUE, got {pair!r}")
        settings[name.removeprefix("AUDIOGUARD_")] = value
    return settings


def _api(args: argparse.Namespace) -> int:
    import sys

    from services.cli.common import settings_from
    from services.tools.api_loadtest import api_load

    database_url = settings_from(args).database.url
    if not database_url:
        print("loadtest api: set database.url (AUDIOGUARD_DATABASE__URL=postgresql://...)", file=sys.stderr)
        return 2
    rows = api_load(database_url, args.store_url, args.users, args.seconds, args.clip_seconds, args.wait)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"HTTP API upload+wait ({args.clip_seconds:g} s clips, Prefer: wait={args.wait})")
    for column in (
        "users",
        "requests",
        "200 + verdict",
        "req/s",
        "p50 (s)",
        "p99 (s)",
        "other answers",
        "API RSS MiB",
    ):
        table.add_column(column)
    for row in rows:
        other = ", ".join(f"{k}: {v}" for k, v in row["other"].items()) or "-"
        table.add_row(
            str(row["users"]),
            str(row["requests"]),
            str(row["ok_200"]),
            f"{row['rps']:.1f}",
            f"{row['p50_s']:.2f}",
            f"{row['p99_s']:.2f}",
            other,
            f"{row['api_rss_mib']:.0f}",
        )
    Console().print(table)
    return 0
