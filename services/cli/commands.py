"""Sub-commands of the spine: schemas, broker, topics, publish, worker, verdicts, demo.

Each handler builds `Settings` from the config file, the environment and its flags, and
imports what it needs lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TRANSPORTS = ("kafka", "pubsub", "kinesis")


def _transport_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transport")
    group.add_argument("--transport", choices=TRANSPORTS, help="message transport (default: settings, kafka)")
    group.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port[,host:port]")
    group.add_argument(
        "--tenant",
        action="append",
        dest="tenants",
        metavar="TENANT",
        help="tenant to serve (repeatable); on Kafka the default is every arrivals topic",
    )


def settings_from(args: argparse.Namespace, **extra: Any) -> Any:
    """Settings from --config / $AUDIOGUARD_CONFIG, AUDIOGUARD_* variables, then these flags."""
    from services.settings import load_settings

    overrides: dict[str, Any] = dict(extra)
    settings = load_settings(getattr(args, "config", None))
    if getattr(args, "transport", None):
        overrides["transport"] = args.transport
    if getattr(args, "tenants", None):
        overrides["tenants"] = args.tenants
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka"] = settings.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    return settings.model_copy(update=overrides) if overrides else settings


def add_parser(subparsers: Any) -> None:
    schemas = subparsers.add_parser("schemas", help="export the JSON Schema of the contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser("export", help="write schemas/*.schema.json from the pydantic models")
    export.set_defaults(handler=_schemas_export)

    broker = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, memory storage)",
        description="Start Tansu on 127.0.0.1:PORT and keep it running until Ctrl-C / SIGTERM. "
        "Its data lives in memory and is gone when it stops.",
    )
    broker.add_argument("--port", type=int, default=9092, help="listen port (default 9092)")
    broker.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    broker.set_defaults(handler=_broker)

    topics = subparsers.add_parser("topics", help="create a tenant's topics / subscriptions / streams")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser(
        "create",
        help="create arrivals, verdicts and dead-letter destinations for tenants (idempotent)",
        description="Kafka: audioguard.{arrivals,verdicts,dlq}.<tenant>; Pub/Sub: topics, the workers' "
        "subscription with dead-letter and retry policy; Kinesis: streams.",
    )
    _transport_flags(create)
    create.add_argument("--partitions", type=int, default=1, help="Kafka partitions per topic")
    create.set_defaults(handler=_topics_create)

    publish = subparsers.add_parser(
        "publish",
        help="the platform side: store audio files and publish one arrival event each",
        description="Copies each FILE into the storage location (--storage-uri, default the tenant's "
        "first file root) and publishes an AudioArrival to the tenant's arrivals destination.",
    )
    _transport_flags(publish)
    publish.add_argument("files", nargs="+", type=Path, metavar="FILE")
    publish.add_argument("--storage-uri", help="where to put the audio: file:///dir or s3://bucket/prefix")
    publish.add_argument("--key-prefix", default="", help="prefix of the idempotency keys")
    publish.set_defaults(handler=_publish)

    worker = subparsers.add_parser(
        "worker",
        help="run a worker: consume arrivals, score audio, publish verdicts",
        description="Consumes arrivals, fetches and decodes the audio, micro-batches and scores it, "
        "publishes one verdict per upload (or a dead letter with its reason) and only then commits. "
        "SIGTERM drains in-flight work within drain_seconds.",
    )
    _transport_flags(worker)
    worker.add_argument(
        "--store", help="verdict store URL: memory://, sqlite:///file.db, redis://host:6379/0"
    )
    worker.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port")
    worker.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs")
    worker.set_defaults(handler=_worker)

    verdicts = subparsers.add_parser("verdicts", help="print a tenant's verdicts (JSON lines)")
    _transport_flags(verdicts)
    verdicts.add_argument("--follow", action="store_true", help="keep printing new verdicts until Ctrl-C")
    verdicts.add_argument("--dlq", action="store_true", help="print the dead-letter topic instead")
    verdicts.set_defaults(handler=_verdicts)

    demo = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on local servers with bundled clips",
        description="Starts the transport's local server (the embedded Tansu broker, Google's Pub/Sub "
        "emulator, or moto for Kinesis and S3), creates three tenants, publishes the bundled clips "
        "(plus two bad events), runs a worker, prints each verdict and a summary table, stops.",
    )
    demo.add_argument("--transport", choices=TRANSPORTS, default="kafka")
    demo.add_argument("--repeat", type=int, default=1, help="publish the clip set this many times")
    demo.add_argument("--timeout", type=float, default=110.0, help="give up after this many seconds")
    demo.add_argument(
        "--clips", type=Path, default=None, help="a folder with labels.csv (file,label,...) to use instead"
    )
    demo.set_defaults(handler=_demo)


def _schemas_export(args: argparse.Namespace) -> int:
    from schemas import export_json_schemas

    for path in export_json_schemas():
        print(path)
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)


def _broker(args: argparse.Namespace) -> int:
    from services.local.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port, host=args.host) as broker:
        print(f"broker listening on {broker.bootstrap_servers} (Ctrl-C to stop)", flush=True)
        _wait_for_signal()
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from consumers.transports.registry import provision

    settings = settings_from(args)
    if not settings.tenants:
        print("topics create: name at least one --tenant", file=sys.stderr)
        return 2
    provision(settings, settings.tenants, partitions=args.partitions)
    print(f"created {settings.transport} destinations for: {', '.join(settings.tenants)}")
    return 0


def arrival_for(tenant: str, uri: str, data: bytes, *, key: str, content_id: str) -> bytes:
    """The AudioArrival a platform would publish for one stored upload."""
    from schemas import AudioArrival

    arrival = AudioArrival(
        event_id=str(uuid.uuid4()),
        idempotency_key=key,
        tenant_id=tenant,
        content_id=content_id,
        audio_uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        byte_size=len(data),
        submitted_at=datetime.now(UTC),
    )
    return arrival.model_dump_json().encode()


def _publish(args: argparse.Namespace) -> int:
    from consumers.transport import OutRecord
    from consumers.transports.registry import open_publisher
    from services.storage import AudioStorage

    settings = settings_from(args)
    if not settings.tenants or len(settings.tenants) != 1:
        print("publish: name exactly one --tenant", file=sys.stderr)
        return 2
    tenant = settings.tenants[0]
    base = args.storage_uri
    if base is None:
        roots = settings.storage.tenant_file_roots.get(tenant) or settings.storage.file_roots
        if not roots:
            print("publish: give --storage-uri or configure storage.file_roots", file=sys.stderr)
            return 2
        base = f"file://{Path(roots[0]).resolve()}"
    storage = AudioStorage(settings.storage)
    sink = open_publisher(settings)
    futures = []
    for path in args.files:
        data = path.read_bytes()
        content_id = f"{path.stem}-{hashlib.sha256(data).hexdigest()[:12]}"
        uri = storage.put(data, f"{base.rstrip('/')}/{content_id}{path.suffix}")
        key = f"{args.key_prefix}{tenant}:{content_id}"
        value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
        futures.append(
            sink.publish(OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value))
        )
        print(json.dumps({"tenant": tenant, "idempotency_key": key, "audio_uri": uri}))
    sink.flush(30)
    for future in futures:
        future.result(30)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from consumers.runner import build_worker
    from services.errors import FatalError
    from services.logs import configure_logging

    extra: dict[str, Any] = {}
    if args.metrics_port is not None:
        extra["metrics_port"] = args.metrics_port
    if args.device:
        extra["device"] = args.device
    settings = settings_from(args, **extra)
    if args.store:
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": args.store})}
        )
    configure_logging(settings.log_level, settings.log_format, secrets_from=settings)
    from services.health import Heartbeat, Readiness, start_health_server

    heartbeat, readiness = Heartbeat(), Readiness()
    heartbeat.beat()  # alive while the model loads; /readyz says what is still missing
    health = None
    if settings.metrics_port is not None:
        health = start_health_server(settings.metrics_port, ready=readiness, alive=heartbeat)
    try:
        hooks = _worker_hooks(settings, heartbeat, readiness)
        worker = build_worker(settings, detector=hooks.detector, hooks=hooks)
    except FatalError as error:
        print(f"audioguard worker: {error}", file=sys.stderr)
        return 3
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        readiness.set(draining=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
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
        if health is not None:
            health.stop()


def _worker_hooks(settings: Any, heartbeat: Any, readiness: Any) -> Any:
    """Load the model, run one warm-up inference, and build the worker's metric hooks."""
    import numpy as np

    from consumers.instrumentation import PipelineHooks
    from services.detector import load_detector
    from services.metrics import set_worker_info

    detector = load_detector(settings.model_path, device=settings.device)
    readiness.set(model_loaded=True)
    # the first forward pass pays for allocator and kernel setup; pay it before traffic
    detector.score_windows(np.zeros((1, detector.meta.window_samples), dtype=np.float32))
    readiness.set(warmed_up=True)
    set_worker_info(
        settings.worker_id, str(detector.meta.version), transport=settings.transport, device=detector.device
    )
    return PipelineHooks.for_detector(
        detector, heartbeat=heartbeat, readiness=readiness, max_windows=settings.batch.max_windows
    )


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
        for _key, value, headers in records:
            if any(name == REPLAYED_MARK_HEADER for name, _ in headers):
                continue  # the DLQ tool's bookkeeping marker, not a dead letter
            print(value.decode(errors="replace"), flush=True)
    except ValueError as error:
        print(f"verdicts: {error}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from services.tools.demo import run_demo

    started = time.monotonic()
    from services.tools.demo import DEMO_CLIPS

    code = run_demo(
        transport=args.transport, repeat=args.repeat, timeout=args.timeout, clips_dir=args.clips or DEMO_CLIPS
    )
    print(f"demo finished in {time.monotonic() - started:.1f}s")
    return code
