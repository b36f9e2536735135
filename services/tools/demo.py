"""`audioguard demo [--transport kafka|pubsub|kinesis|memory]`: the whole pipeline on local servers.

Starts the transport's local stand-in on a free loopback port (Tansu for Kafka, Google's
Pub/Sub emulator, or moto_server for Kinesis *and* S3; for memory, a broker inside this
process), creates three tenants, stores the
bundled clips (services/demo_clips, with their labels and provenance) in per-tenant
storage (file:// roots; S3 prefixes on Kinesis), publishes one arrival per clip plus two
bad events (a malformed payload and a URI into another tenant's storage), runs one worker,
prints each verdict as it lands and a summary table, then stops everything.

This module only drives the demo; it never imports an SDK (the adapters do).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_CLIPS = Path(__file__).resolve().parents[1] / "demo_clips"
DEMO_TENANTS = ("acme", "globex", "initech")


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    generator: str
    language: str


@dataclass
class Results:
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: list[tuple[str, str]] = field(default_factory=list)


def load_clips(directory: Path = DEMO_CLIPS) -> list[Clip]:
    with open(directory / "labels.csv", newline="") as handle:
        return [
            Clip(directory / row["file"], row["label"], row.get("generator", ""), row.get("language", ""))
            for row in csv.DictReader(handle)
        ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def _tansu() -> Iterator[tuple[str, str]]:
    from services.local.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield "embedded broker (Tansu)", broker.bootstrap_servers


@contextlib.contextmanager
def _pubsub_emulator() -> Iterator[tuple[str, str]]:
    from services.local.emulators import PubSubEmulator

    with PubSubEmulator() as emulator:
        yield "Pub/Sub emulator", emulator.host_port


@contextlib.contextmanager
def _moto() -> Iterator[tuple[str, str]]:
    from services.local.emulators import MotoServer

    # moto accepts any credentials; the S3 and Kinesis clients need some to sign with
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "audioguard-local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "audioguard-local")
    with MotoServer() as moto:
        yield "moto_server (Kinesis + S3)", moto.endpoint_url


@contextlib.contextmanager
def _memory_broker() -> Iterator[tuple[str, str]]:
    from consumers.transports.memory import forget_broker

    # the "endpoint" is the broker's name in this process; nothing listens anywhere
    name = f"audioguard-demo-{uuid.uuid4().hex[:8]}"
    try:
        yield "in-process memory broker", name
    finally:
        forget_broker(name)


def _kafka_values(endpoint: str) -> dict[str, Any]:
    from services.settings import KafkaSettings

    return {"kafka": KafkaSettings(bootstrap_servers=endpoint, group_id="audioguard-demo")}


def _pubsub_values(endpoint: str) -> dict[str, Any]:
    from services.settings import PubSubSettings

    return {"pubsub": PubSubSettings(emulator_host=endpoint, ack_deadline_seconds=10)}


def _kinesis_values(endpoint: str) -> dict[str, Any]:
    from services.settings import KinesisSettings, StorageSettings

    return {
        "kinesis": KinesisSettings(endpoint_url=endpoint, poll_interval_seconds=0.05),
        # moto serves S3 too, so the uploads go where a Kinesis platform would put them
        "storage": StorageSettings(
            s3_endpoint_url=endpoint, tenant_s3_locations={t: [f"audioguard-demo/{t}/"] for t in DEMO_TENANTS}
        ),
    }


def _memory_values(endpoint: str) -> dict[str, Any]:
    from services.settings import MemorySettings

    return {"memory": MemorySettings(broker=endpoint, group_id="audioguard-demo")}


@dataclass(frozen=True)
class DemoTransport:
    """How the demo differs per transport (the rest is consumers.transports.registry)."""

    #: starts the local stand-in; yields (description, endpoint)
    server: Callable[[], contextlib.AbstractContextManager[tuple[str, str]]]
    #: the transport's own settings values for that endpoint
    values: Callable[[str], dict[str, Any]]
    #: uploads go to S3 (moto) instead of per-tenant file roots
    audio_on_s3: bool = False
    #: dead letters are read from the DLQ tool's replay subscription (Pub/Sub's verdict
    #: reader cannot read them)
    dead_letters_by_subscription: bool = False


#: one entry per name of consumers.transports.registry.TRANSPORTS (a test keeps them equal)
DEMO_TRANSPORTS: dict[str, DemoTransport] = {
    "kafka": DemoTransport(_tansu, _kafka_values),
    "pubsub": DemoTransport(_pubsub_emulator, _pubsub_values, dead_letters_by_subscription=True),
    "kinesis": DemoTransport(_moto, _kinesis_values, audio_on_s3=True),
    "memory": DemoTransport(_memory_broker, _memory_values),
}


def local_server(transport: str) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """Start the transport's local server; yields (description, endpoint)."""
    return DEMO_TRANSPORTS[transport].server()


#: the demo's model, as a worker in production names it: the registry's champion
DEMO_MODEL = "audioguard-lfb-cnn"


def register_shipped_model(registry_dir: Path) -> str:
    """Register the shipped artifact in a file registry at `registry_dir` and make it the
    champion; returns the model URI a worker loads (`models:/<name>@champion`)."""
    from services.detector import default_artifact_dir
    from services.registry import FileRegistry

    registry = FileRegistry(registry_dir)
    aliases = registry.aliases(DEMO_MODEL) if DEMO_MODEL in registry.names() else {}
    if "champion" not in aliases:
        version = registry.register(DEMO_MODEL, default_artifact_dir(), description="the shipped detector")
        registry.set_alias(DEMO_MODEL, "champion", version.version, reason="demo set-up")
    return f"models:/{DEMO_MODEL}@champion"


def demo_settings(transport: str, root: Path, endpoint: str) -> Any:
    """Settings of the demo worker for `transport` against a local server at `endpoint`; the
    model comes from a file registry under `root` where the shipped artifact is the champion."""
    from services.settings import RegistrySettings, Settings, StorageSettings, StoreSettings

    model_uri = register_shipped_model(root / "registry")
    values: dict[str, Any] = {
        "model_path": model_uri,
        "registry": RegistrySettings(uri=str(root / "registry")),
        "transport": transport,
        "tenants": list(DEMO_TENANTS),
        "store": StoreSettings(url=f"sqlite:///{root / 'verdicts.db'}"),
        "drain_seconds": 5.0,
        "storage": StorageSettings(tenant_file_roots={t: [root / t] for t in DEMO_TENANTS}),
    }
    values.update(DEMO_TRANSPORTS[transport].values(endpoint))
    return Settings(**values)


def storage_uri(transport: str, root: Path, tenant: str, name: str) -> str:
    """Where the demo's platform stores an upload: S3 on Kinesis (moto serves both), else a file."""
    if DEMO_TRANSPORTS[transport].audio_on_s3:
        return f"s3://audioguard-demo/{tenant}/{name}"
    return f"file://{root / tenant / name}"


def destination_reader(
    settings: Any, tenant: str, kind: str
) -> Callable[[Callable[[], bool]], Iterator[Any]]:
    """A follow-reader of a tenant's verdicts ("verdicts") or dead letters ("dlq"): call it
    with a stop function. On Pub/Sub the dead letters come from the replay subscription."""
    from consumers.transports.registry import read_verdicts

    if DEMO_TRANSPORTS[settings.transport].dead_letters_by_subscription and kind == "dlq":
        from consumers.tenancy import pubsub_subscription
        from consumers.transports.pubsub import read_subscription

        name = pubsub_subscription(tenant, "dlq")
        return lambda stop: read_subscription(settings, name, follow=True, stop=stop)
    return lambda stop: read_verdicts(settings, tenant, dead_letters=kind == "dlq", follow=True, stop=stop)


def run_demo(
    transport: str = "kafka",
    repeat: int = 1,
    timeout: float = 110.0,
    clips_dir: Path = DEMO_CLIPS,
    api_database_url: str | None = None,
) -> int:
    """The whole pipeline on bundled clips; with `api_database_url`, one more detection over HTTP."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from consumers.transport import OutRecord
    from consumers.transports.registry import open_publisher, provision
    from dlq.envelope import dead_letter_from_record
    from services.logs import configure_logging
    from services.platform import arrival_for
    from services.storage import AudioStorage
    from services.tools.worker import build_worker, load_model

    console = Console()
    configure_logging("ERROR", "text")
    clips = load_clips(clips_dir) * max(1, repeat)
    with (
        tempfile.TemporaryDirectory(prefix="audioguard-demo-") as tmp,
        local_server(transport) as (name, endpoint),
    ):
        root = Path(tmp)
        console.print(f"[bold]{name}[/] on {endpoint}")
        settings = demo_settings(transport, root, endpoint)
        provision(settings, list(DEMO_TENANTS), partitions=2)
        detector = load_model(settings)
        console.print(
            f"[bold]model[/] {settings.model_path} = {detector.meta.name} {detector.meta.version} "
            f"on {detector.device} "
            f"(sha256 {detector.meta.checksum[:12]}…)"
        )

        # the worker joins (its consumer group, its subscriptions, its shards) first,
        # as it would in production
        worker = build_worker(settings, detector=detector)
        stop = threading.Event()
        runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        runner.start()
        deadline = time.monotonic() + 30
        while not worker.source.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        console.print(f"[bold]worker[/] {settings.worker_id} consuming {transport}")

        # the platforms' side: store each clip in its tenant's storage, publish an arrival
        started = time.monotonic()
        storage = AudioStorage(settings.storage)
        publisher = open_publisher(settings)
        expected: dict[str, Clip] = {}
        futures = []
        for i, clip in enumerate(clips):
            tenant = DEMO_TENANTS[i % len(DEMO_TENANTS)]
            data = clip.path.read_bytes()
            content_id = f"{clip.path.stem}-{i}"
            uri = storage.put(data, storage_uri(transport, root, tenant, content_id + clip.path.suffix))
            key = f"{tenant}:{content_id}"
            expected[key] = clip
            value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
            futures.append(publisher.publish(OutRecord(tenant, "arrivals", key.encode(), value)))
        # two bad events: they must end in the dead-letter topics, and nobody else may suffer
        stolen = storage_uri(transport, root, "acme", "x.wav")
        bad = [
            OutRecord("acme", "arrivals", b"bad-1", b'{"event_id": "oops", "tenant_id": "acme"'),
            OutRecord(
                "globex",
                "arrivals",
                b"bad-2",
                arrival_for("globex", stolen, b"x", key="globex:steal", content_id="x"),
            ),
        ]
        futures += [publisher.publish(record) for record in bad]
        publisher.flush(30)
        for future in futures:
            future.result(30)
        publisher.close(5)
        total = len(expected) + len(bad)
        console.print(
            f"[bold]published[/] {len(expected)} clips + {len(bad)} bad events "
            f"over {len(DEMO_TENANTS)} tenants"
        )

        results = Results()
        done = threading.Event()

        def read(tenant: str, kind: str) -> None:
            for _key, value, headers in destination_reader(settings, tenant, kind)(done.is_set):
                if kind == "verdicts":
                    verdict = json.loads(value)
                    results.verdicts[verdict["idempotency_key"]] = verdict
                else:
                    envelope, _payload = dead_letter_from_record(value, headers)
                    results.dead_letters.append((tenant, envelope.reason))

        readers = [
            threading.Thread(target=read, args=(tenant, kind), daemon=True)
            for tenant in DEMO_TENANTS
            for kind in ("verdicts", "dlq")
        ]
        for reader in readers:
            reader.start()
        printed: set[str] = set()
        with Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("scoring", total=total)
            while time.monotonic() - started < timeout:
                for key, verdict in list(results.verdicts.items()):
                    if key in printed:
                        continue
                    printed.add(key)
                    known = expected.get(key)
                    truth = known.label if known else "?"
                    mark = "✓" if truth == verdict["label"] else "✗"
                    progress.console.print(
                        f"{verdict['tenant_id']:<8} {verdict['content_id'][:26]:<26} {verdict['label']:<12} "
                        f"{verdict['score']:.3f} truth={truth} {mark}",
                        highlight=False,
                    )
                finished = len(results.verdicts) + len(results.dead_letters)
                progress.update(task, completed=finished)
                if finished >= total:
                    break
                time.sleep(0.1)
        elapsed = time.monotonic() - started
        done.set()
        for reader in readers:
            reader.join(5)
        api_ok = True
        if api_database_url is not None:
            # after the readers stopped (its verdict is not one of the summary's), before the worker
            from services.tools.demo_api import api_detection

            api_ok = api_detection(settings, api_database_url, clips[0].path, console)
        stop.set()
        runner.join(30)

    console.print(summary_table(transport, total, expected, results, elapsed))
    missing = total - len(results.verdicts) - len(results.dead_letters)
    if missing:
        console.print(
            f"[red]{missing} events got neither a verdict nor a dead letter within {timeout:.0f}s[/]"
        )
        return 1
    if not api_ok:
        console.print("[red]the HTTP detection did not come back with a verdict[/]")
        return 1
    return 0


def summary_table(
    transport: str, total: int, expected: dict[str, Clip], results: Results, elapsed: float
) -> Any:
    from rich.table import Table

    verdicts = list(results.verdicts.values())
    latencies = [v["timings"]["end_to_end_seconds"] for v in verdicts]
    decided = [(expected[k].label, v["label"]) for k, v in results.verdicts.items() if k in expected]
    correct = sum(1 for truth, got in decided if truth == got)
    confident = [(t, g) for t, g in decided if g != "inconclusive"]
    confident_correct = sum(1 for t, g in confident if t == g)
    reasons = ", ".join(sorted(r for _, r in results.dead_letters))
    table = Table(title=f"audioguard demo summary ({transport})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("events published", str(total))
    table.add_row("verdicts", str(len(verdicts)))
    table.add_row("dead letters", f"{len(results.dead_letters)} ({reasons})")
    table.add_row("wall time (s)", f"{elapsed:.1f}")
    table.add_row("throughput (events/s)", f"{(len(verdicts) + len(results.dead_letters)) / elapsed:.1f}")
    table.add_row("end-to-end p50 (s)", f"{percentile(latencies, 50):.2f}")
    table.add_row("end-to-end p99 (s)", f"{percentile(latencies, 99):.2f}")
    table.add_row(
        "accuracy (all verdicts)", f"{correct}/{len(decided)} = {correct / max(1, len(decided)):.0%}"
    )
    table.add_row(
        "accuracy (excl. inconclusive)",
        f"{confident_correct}/{len(confident)} = {confident_correct / max(1, len(confident)):.0%}",
    )
    return table
