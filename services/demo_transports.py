"""`audioguard demo --transport pubsub|kinesis`: the demo on Google's Pub/Sub emulator or moto.

The same story as the Kafka demo (services/demo.py): three tenants, the bundled clips
(one arrival each, `repeat` times) and two bad events, one worker, every verdict printed
as it lands, then a summary table. The servers are the real local stand-ins, started on
free loopback ports and stopped afterwards: the Pub/Sub emulator (audio on file://), or
moto_server for Kinesis *and* S3 (the audio is stored in and fetched from S3).

This module only drives the demo; it never imports an SDK (the adapters do).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from services.demo import DEMO_CLIPS, DEMO_TENANTS, Clip, Results, load_clips, percentile

__all__ = ["destination_reader", "run_transport_demo"]

Reader = Callable[..., Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]]


def destination_reader(
    settings: Any, tenant: str, kind: str
) -> Callable[[Callable[[], bool]], Iterator[Any]]:
    """A follow-reader of a tenant's verdicts ("verdicts") or dead letters ("dlq") on the
    configured Pub/Sub or Kinesis transport: call it with a stop function."""
    if settings.transport == "pubsub":
        from consumers.pubsub import read_subscription, verdict_subscription
        from consumers.tenancy import pubsub_subscription

        name = verdict_subscription(tenant) if kind == "verdicts" else pubsub_subscription(tenant, "dlq")
        return lambda stop: read_subscription(settings, name, follow=True, stop=stop)
    from consumers.kinesis import read_stream
    from consumers.tenancy import kinesis_stream

    stream = kinesis_stream(kind, tenant)
    return lambda stop: read_stream(settings, stream, follow=True, stop=stop)


def demo_settings(transport: str, root: Path, endpoint: str) -> Any:
    """Settings of the demo worker for `transport` against a local server at `endpoint`."""
    from services.settings import KinesisSettings, PubSubSettings, Settings, StorageSettings, StoreSettings

    store = StoreSettings(url=f"sqlite:///{root / 'verdicts.db'}")
    tenants = list(DEMO_TENANTS)
    if transport == "pubsub":
        return Settings(
            transport="pubsub",
            tenants=tenants,
            store=store,
            drain_seconds=5.0,
            pubsub=PubSubSettings(emulator_host=endpoint, ack_deadline_seconds=10),
            storage=StorageSettings(tenant_file_roots={t: [root / t] for t in DEMO_TENANTS}),
        )
    return Settings(
        transport="kinesis",
        tenants=tenants,
        store=store,
        drain_seconds=5.0,
        kinesis=KinesisSettings(endpoint_url=endpoint, poll_interval_seconds=0.05),
        storage=StorageSettings(
            s3_endpoint_url=endpoint,
            tenant_s3_locations={t: [f"audioguard-demo/{t}/"] for t in DEMO_TENANTS},
        ),
    )


def run_transport_demo(
    transport: str, repeat: int = 1, timeout: float = 110.0, clips_dir: Path = DEMO_CLIPS
) -> int:
    from rich.console import Console
    from rich.table import Table

    from consumers.runner import build_worker
    from consumers.transport import OutRecord
    from consumers.transports import open_publisher, provision
    from dlq.envelope import dead_letter_from_record
    from services.commands import arrival_for
    from services.detector import load_detector
    from services.emulators import MotoServer, PubSubEmulator
    from services.logs import configure_logging
    from services.storage import AudioStorage

    if transport not in ("pubsub", "kinesis"):
        raise ValueError(f"no transport demo for {transport!r}")
    console = Console()
    configure_logging("ERROR", "text")
    if transport == "kinesis":
        # moto accepts any credentials; S3 and Kinesis clients need some to sign with
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "audioguard-local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "audioguard-local")
    clips = load_clips(clips_dir) * max(1, repeat)
    server = PubSubEmulator() if transport == "pubsub" else MotoServer()
    with tempfile.TemporaryDirectory(prefix="audioguard-demo-") as tmp, server:
        root = Path(tmp)
        endpoint = server.host_port if isinstance(server, PubSubEmulator) else server.endpoint_url
        name = "Pub/Sub emulator" if transport == "pubsub" else "moto_server (Kinesis + S3)"
        console.print(f"[bold]{name}[/] on {endpoint}")
        settings = demo_settings(transport, root, endpoint)
        provision(settings, list(DEMO_TENANTS))
        detector = load_detector(settings.model_path, device=settings.device)
        console.print(f"[bold]model[/] {detector.meta.name} {detector.meta.version} on {detector.device}")

        worker = build_worker(settings, detector=detector)
        stop = threading.Event()
        runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        runner.start()

        started = time.monotonic()
        storage = AudioStorage(settings.storage)
        publisher = open_publisher(settings)
        expected: dict[str, Clip] = {}
        futures = []
        for i, clip in enumerate(clips):
            tenant = DEMO_TENANTS[i % len(DEMO_TENANTS)]
            data = clip.path.read_bytes()
            content_id = f"{clip.path.stem}-{i}"
            target = (
                f"file://{root / tenant / (content_id + clip.path.suffix)}"
                if transport == "pubsub"
                else f"s3://audioguard-demo/{tenant}/{content_id}{clip.path.suffix}"
            )
            uri = storage.put(data, target)
            key = f"{tenant}:{content_id}"
            expected[key] = clip
            value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
            futures.append(publisher.publish(OutRecord(tenant, "arrivals", key.encode(), value)))
        stolen = (
            f"file://{root / 'acme' / 'x.wav'}"
            if transport == "pubsub"
            else "s3://audioguard-demo/acme/x.wav"
        )
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
        while time.monotonic() - started < timeout:
            for key, verdict in list(results.verdicts.items()):
                if key in printed:
                    continue
                printed.add(key)
                known = expected.get(key)
                truth = known.label if known else "?"
                console.print(
                    f"{verdict['tenant_id']:<8} {verdict['content_id'][:26]:<26} {verdict['label']:<12} "
                    f"{verdict['score']:.3f} truth={truth} {'✓' if truth == verdict['label'] else '✗'}",
                    highlight=False,
                )
            if len(results.verdicts) + len(results.dead_letters) >= total:
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
    table = Table(title=f"audioguard demo summary ({transport})")
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
    console.print(table)
    missing = total - len(verdicts) - len(results.dead_letters)
    if missing:
        console.print(
            f"[red]{missing} events got neither a verdict nor a dead letter within {timeout:.0f}s[/]"
        )
        return 1
    return 0
