"""`audioguard worker` and `audioguard verdicts`: run a worker, read what it published."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from services.cli.common import settings_from, transport_flags


def add_parser(subparsers: Any) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="run a worker: consume arrivals, score audio, publish verdicts",
        description="Consumes arrivals, fetches and decodes the audio, micro-batches and scores it, "
        "publishes one verdict per upload (or a dead letter with its reason) and only then commits. "
        "SIGTERM drains in-flight work within drain_seconds.",
    )
    transport_flags(worker)
    worker.add_argument(
        "--store", help="verdict store URL: memory://, sqlite:///file.db, redis://host:6379/0"
    )
    worker.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port")
    worker.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs")
    worker.add_argument(
        "--model",
        metavar="PATH|models:/NAME@ALIAS",
        help="an artifact directory, or a registry reference (setting model_path; default: the shipped "
        "model); an alias is followed without a restart every registry.poll_seconds (docs/models.md)",
    )
    worker.add_argument(
        "--scorer",
        choices=("model", "null"),
        default="model",
        help="null: constant scores at no cost, verdicts with model name 'null' (measuring only)",
    )
    several = worker.add_argument_group(
        "several processes",
        "run N worker processes under a supervisor: each is its own consumer-group member with "
        "its own model and cores / N torch threads; a child that dies is restarted with backoff, "
        "SIGTERM drains them all; --metrics-port is then served by the supervisor (exit codes: "
        "3 a child's fatal error, 4 children kept dying at start-up)",
    )
    several.add_argument("--processes", type=int, metavar="N", help="worker processes (per GPU with --gpus)")
    several.add_argument(
        "--gpus",
        metavar="all|ID[,ID...]",
        help="one worker process per CUDA device (CUDA_VISIBLE_DEVICES set per child); "
        "'all': every device this process can see",
    )
    worker.set_defaults(handler=_worker)

    verdicts = subparsers.add_parser(
        "verdicts",
        help="print a tenant's verdicts (JSON lines), or its dead letters with their reasons (--dlq)",
    )
    transport_flags(verdicts)
    verdicts.add_argument("--follow", action="store_true", help="keep printing new verdicts until Ctrl-C")
    verdicts.add_argument(
        "--dlq",
        action="store_true",
        help="print the dead letters instead: category, reason, attempts, payload (a table; --json for JSON)",
    )
    verdicts.add_argument(
        "--json", action="store_true", help="with --dlq: one JSON object per dead letter instead of a table"
    )
    verdicts.set_defaults(handler=_verdicts)


def _worker(args: argparse.Namespace) -> int:
    if args.processes is not None or args.gpus is not None:
        return _supervise(args)
    from services.errors import FatalError
    from services.logs import configure_logging
    from services.tools.worker import build_worker_when_reachable, load_serving_detector, watch_model

    extra: dict[str, Any] = {}
    if args.metrics_port is not None:
        extra["metrics_port"] = args.metrics_port
    if args.device:
        extra["device"] = args.device
    if args.model:
        extra["model_path"] = args.model
    settings = settings_from(args, **extra)
    if args.store:
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": args.store})}
        )
    configure_logging(settings.log_level, settings.log_format, secrets_from=settings)
    from services.health import Heartbeat, Readiness, start_health_server

    heartbeat, readiness = Heartbeat(), Readiness()
    heartbeat.beat()  # alive while the model loads; /readyz says what is still missing
    # installed before the model loads: a SIGTERM during start-up still ends in a clean
    # stop with the final counts, not a bare exit -15
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        readiness.set(draining=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    health = None
    if settings.metrics_port is not None:
        health = start_health_server(
            settings.metrics_port, host=settings.metrics_host, ready=readiness, alive=heartbeat
        )
    try:
        hooks = load_serving_detector(settings, heartbeat, readiness, scorer=args.scorer)
        worker = build_worker_when_reachable(
            settings, stop=stop, heartbeat=heartbeat, detector=hooks.detector, hooks=hooks
        )
        if worker is None:
            print("audioguard worker: stopped before its transport or store was reachable", file=sys.stderr)
            return 0
        # models:/<name>@<alias>: follow the alias, swapping between batches (docs/models.md)
        watcher = watch_model(worker, settings, scorer=args.scorer)
    except FatalError as error:
        print(f"audioguard worker: {error}", file=sys.stderr)
        return 3
    try:
        code = worker.run(stop)
        # the final counts, one JSON line on stderr: operators and the contract suite read it
        stats = dict(vars(worker.pipeline.stats))
        print(json.dumps({"event": "worker stopped", "stats": stats}), file=sys.stderr, flush=True)
        return code
    except FatalError as error:
        print(f"audioguard worker: stopped on a fatal error: {error}", file=sys.stderr)
        return 3
    finally:
        if watcher is not None:
            watcher.stop()
        if health is not None:
            health.stop()


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The command of one child: this worker's own flags, less those the supervisor handles."""
    argv = [sys.executable, "-m", "services.cli"]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    argv.append("worker")
    for flag, value in (
        ("--transport", args.transport),
        ("--bootstrap-servers", args.bootstrap_servers),
        ("--store", args.store),
        ("--device", args.device),
        ("--scorer", args.scorer),
        ("--model", args.model),
    ):
        if value:
            argv += [flag, value]
    for tenant in args.tenants or []:
        argv += ["--tenant", tenant]
    return argv


def _supervise(args: argparse.Namespace) -> int:
    from services.errors import FatalError
    from services.logs import configure_logging
    from services.tools.supervisor import (
        SHUTDOWN_MARGIN_SECONDS,
        ChildSpec,
        Supervisor,
        SupervisorHealth,
        child_environments,
        visible_gpus,
    )

    processes = 1 if args.processes is None else args.processes
    if processes < 1:
        print("audioguard worker: --processes must be at least 1", file=sys.stderr)
        return 2
    extra: dict[str, Any] = {}
    if args.metrics_port is not None:
        extra["metrics_port"] = args.metrics_port
    settings = settings_from(args, **extra)
    configure_logging(settings.log_level, settings.log_format, secrets_from=settings)
    gpus: list[str] | None = None
    if args.gpus is not None:
        if args.device == "cpu":
            print("audioguard worker: --gpus and --device cpu contradict each other", file=sys.stderr)
            return 2
        try:
            gpus = (
                visible_gpus()
                if args.gpus == "all"
                else [g.strip() for g in args.gpus.split(",") if g.strip()]
            )
        except FatalError as error:
            print(f"audioguard worker: {error}", file=sys.stderr)
            return 2
        if not gpus:
            print("audioguard worker: --gpus needs 'all' or device ids such as 0,1", file=sys.stderr)
            return 2
    envs = child_environments(
        processes, worker_id=settings.worker_id, gpus=gpus, torch_threads=settings.torch_threads
    )
    if len(envs) > 1 and settings.transport == "kinesis" and not settings.kinesis.leases:
        # without the lease table every reader reads every shard: two would score every record twice
        print(
            "audioguard worker: Kinesis takes one reader per stream unless kinesis.leases is on "
            "(AUDIOGUARD_KINESIS__LEASES=true); run one process",
            file=sys.stderr,
        )
        return 2
    argv = _child_argv(args)
    if gpus is not None and not args.device:
        argv += ["--device", "cuda"]
    children = [ChildSpec(i, tuple(argv), env) for i, env in enumerate(envs)]
    supervisor = Supervisor(
        children,
        shutdown_seconds=settings.drain_seconds + settings.close_seconds + SHUTDOWN_MARGIN_SECONDS,
        with_health=settings.metrics_port is not None,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    health = None
    if settings.metrics_port is not None:
        health = SupervisorHealth(supervisor).serve(settings.metrics_port, host=settings.metrics_host)
    try:
        code = supervisor.run(stop)
    finally:
        if health is not None:
            health.stop()
    print(
        json.dumps({"event": "supervisor stopped", "code": code, "restarts": supervisor.restarts()}),
        file=sys.stderr,
        flush=True,
    )
    return code


def _verdicts(args: argparse.Namespace) -> int:
    from consumers.transports.registry import read_verdicts
    from dlq.queues import REPLAYED_MARK_HEADER

    settings = settings_from(args)
    if not settings.tenants or len(settings.tenants) != 1:
        print("verdicts: name exactly one --tenant", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        records = read_verdicts(
            settings, settings.tenants[0], dead_letters=args.dlq, follow=args.follow, stop=stop.is_set
        )
        if args.dlq and not args.json:
            print(_DLQ_ROW.format(*_DLQ_COLUMNS), flush=True)
        for key, value, headers in records:
            if any(name == REPLAYED_MARK_HEADER for name, _ in headers):
                continue  # the DLQ tool's bookkeeping marker, not a dead letter
            if args.dlq:
                _print_dead_letter(key, value, headers, as_json=args.json)
            else:
                print(value.decode(errors="replace"), flush=True)
    except ValueError as error:
        print(f"verdicts: {error}", file=sys.stderr)
        return 2
    return 0


_DLQ_COLUMNS = ("category", "reason", "attempt", "replays", "error class", "key", "payload", "last failed")
_DLQ_ROW = "{:<17} {:<24} {:>7} {:>7} {:<20} {:<36} {:<24} {}"


def _print_dead_letter(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], *, as_json: bool
) -> None:
    """One dead letter as a table row or a JSON line: why it failed, how often, what it carries."""
    from dlq.envelope import dead_letter_from_record
    from dlq.inspect import DeadLetterRecord
    from services.errors import PoisonMessage

    try:
        envelope, payload = dead_letter_from_record(value, headers)
    except PoisonMessage as error:
        print(
            f"verdicts: skipped a record that is not an audioguard dead letter: {error.message}",
            file=sys.stderr,
        )
        return
    record = DeadLetterRecord(
        ref="", envelope=envelope, payload=payload, key=key, headers=tuple(headers), location={}
    )
    summary = record.summary()
    del summary["ref"]  # read from the start, not through the DLQ tool: there is no tool position
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    size = envelope.payload_size if envelope.payload_size is not None else len(payload)
    if not envelope.payload_truncated:
        carried = f"{size} B"
    elif envelope.payload_uri:
        carried = f"{size} B, stored"
    else:
        carried = f"{size} B, prefix only"
    row = (
        envelope.category,
        envelope.reason,
        envelope.attempt,
        envelope.replay_count,
        envelope.error_class.rsplit(".", 1)[-1],
        summary["content_id"] or summary["idempotency_key"] or "-",
        carried,
        envelope.last_failed_at.isoformat(timespec="seconds"),
    )
    print(_DLQ_ROW.format(*(str(cell) for cell in row)), flush=True)
