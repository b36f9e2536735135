"""`audioguard demo`: the whole pipeline on the embedded broker, with bundled clips.

Starts Tansu, creates three tenants, stores the bundled clips (services/demo_clips, with
their labels and provenance) in per-tenant storage roots, publishes one arrival per clip
plus two bad events (a malformed payload and a URI into another tenant's storage), runs
one worker, prints each verdict as it lands and a summary table, then stops everything.
"""

from __future__ import annotations

import csv
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_CLIPS = Path(__file__).parent / "demo_clips"
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


def run_demo(
    transport: str = "kafka", repeat: int = 1, timeout: float = 110.0, clips_dir: Path = DEMO_CLIPS
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from consumers.kafka import read_topic
    from consumers.runner import build_worker
    from consumers.tenancy import kafka_topic
    from consumers.transport import OutRecord
    from consumers.transports import open_publisher, provision
    from dlq.envelope import dead_letter_from_record
    from services.broker import EmbeddedBroker
    from services.commands import arrival_for
    from services.detector import load_detector
    from services.logs import configure_logging
    from services.settings import KafkaSettings, Settings, StorageSettings, StoreSettings
    from services.storage import AudioStorage

    if transport != "kafka":
        from services.demo_transports import run_transport_demo

        return int(run_transport_demo(transport, repeat=repeat, timeout=timeout))

    console = Console()
    configure_logging("ERROR", "text")
    clips = load_clips(clips_dir) * max(1, repeat)
    with tempfile.TemporaryDirectory(prefix="audioguard-demo-") as tmp, EmbeddedBroker() as broker:
        root = Path(tmp)
        console.print(f"[bold]embedded broker[/] Tansu on {broker.bootstrap_servers}")
        settings = Settings(
            tenants=list(DEMO_TENANTS),
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers, group_id="audioguard-demo"),
            storage=StorageSettings(tenant_file_roots={t: [root / t] for t in DEMO_TENANTS}),
            store=StoreSettings(url=f"sqlite:///{root / 'verdicts.db'}"),
            drain_seconds=5.0,
        )
        provision(settings, list(DEMO_TENANTS), partitions=2)
        detector = load_detector(settings.model_path, device=settings.device)
        console.print(
            f"[bold]model[/] {detector.meta.name} {detector.meta.version} on {detector.device} "
            f"(sha256 {detector.meta.checksum[:12]}…)"
        )

        # the worker joins its consumer group first, as it would in production
        worker = build_worker(settings, detector=detector)
        stop = threading.Event()
        runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        runner.start()
        deadline = time.monotonic() + 30
        while not worker.source.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        console.print(f"[bold]worker[/] joined group {settings.kafka.group_id!r}")

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
            uri = storage.put(data, f"file://{root / tenant / (content_id + clip.path.suffix)}")
            key = f"{tenant}:{content_id}"
            expected[key] = clip
            value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
            futures.append(publisher.publish(OutRecord(tenant, "arrivals", key.encode(), value)))
        # two bad events: they must end in the dead-letter topics, and nobody else may suffer
        bad = [
            OutRecord("acme", "arrivals", b"bad-1", b'{"event_id": "oops", "tenant_id": "acme"'),
            OutRecord(
                "globex",
                "arrivals",
                b"bad-2",
                arrival_for(
                    "globex", f"file://{root / 'acme' / 'x.wav'}", b"x", key="globex:steal", content_id="x"
                ),
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
            for _key, value, headers in read_topic(
                settings.kafka, kafka_topic(kind, tenant), follow=True, stop=done.is_set
            ):
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
        stop.set()
        runner.join(30)
        done.set()
        for reader in readers:
            reader.join(5)

    verdicts = list(results.verdicts.values())
    latencies = [v["timings"]["end_to_end_seconds"] for v in verdicts]
    decided = [(expected[k].label, v["label"]) for k, v in results.verdicts.items() if k in expected]
    correct = sum(1 for truth, got in decided if truth == got)
    confident = [(t, g) for t, g in decided if g != "inconclusive"]
    table = Table(title="audioguard demo summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("events published", str(total))
    table.add_row("verdicts", str(len(verdicts)))
    table.add_row(
        "dead letters",
        f"{len(results.dead_letters)} ({', '.join(sorted(r for _, r in results.dead_letters))})",
    )
    table.add_row("wall time (s)", f"{elapsed:.1f}")
    table.add_row("throughput (events/s)", f"{(len(verdicts) + len(results.dead_letters)) / elapsed:.1f}")
    table.add_row("end-to-end p50 (s)", f"{percentile(latencies, 50):.2f}")
    table.add_row("end-to-end p99 (s)", f"{percentile(latencies, 99):.2f}")
    table.add_row(
        "accuracy (all verdicts)", f"{correct}/{len(decided)} = {correct / max(1, len(decided)):.0%}"
    )
    conf_correct = sum(1 for t, g in confident if t == g)
    table.add_row(
        "accuracy (excl. inconclusive)",
        f"{conf_correct}/{len(confident)} = {conf_correct / max(1, len(confident)):.0%}",
    )
    console.print(table)
    missing = total - len(verdicts) - len(results.dead_letters)
    if missing:
        console.print(
            f"[red]{missing} events got neither a verdict nor a dead letter within {timeout:.0f}s[/]"
        )
        return 1
    return 0
