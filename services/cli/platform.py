"""`audioguard topics create` and `audioguard publish`: what a platform does to send uploads."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from services.cli.common import settings_from, transport_flags
from services.platform import arrival_for, shared_headers


def add_parser(subparsers: Any) -> None:
    topics = subparsers.add_parser("topics", help="create a tenant's topics / subscriptions / streams")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser(
        "create",
        help="create arrivals, verdicts and dead-letter destinations for tenants (idempotent)",
        description="Kafka: audioguard.{arrivals,verdicts,dlq}.<tenant>; Pub/Sub: topics, the workers' "
        "subscription with dead-letter and retry policy; Kinesis: streams.",
    )
    transport_flags(create)
    create.add_argument("--partitions", type=int, default=1, help="Kafka partitions per topic")
    create.set_defaults(handler=_topics_create)

    publish = subparsers.add_parser(
        "publish",
        help="the platform side: store audio files and publish one arrival event each",
        description="Copies each FILE into the storage location (--storage-uri, default the tenant's "
        "first file root) and publishes an AudioArrival to the tenant's arrivals destination.",
    )
    transport_flags(publish)
    publish.add_argument("files", nargs="+", type=Path, metavar="FILE")
    publish.add_argument("--storage-uri", help="where to put the audio: file:///dir or s3://bucket/prefix")
    publish.add_argument("--key-prefix", default="", help="prefix of the idempotency keys")
    publish.add_argument(
        "--shared",
        action="store_true",
        help="publish to the shared arrivals topic audioguard.arrivals._shared with the ag-tenant "
        "headers signed by the tenant's secret (tenant_secrets; Kafka and memory only)",
    )
    publish.set_defaults(handler=_publish)


def _topics_create(args: argparse.Namespace) -> int:
    from consumers.transports.registry import provision

    settings = settings_from(args)
    if not settings.tenants:
        print("topics create: name at least one --tenant", file=sys.stderr)
        return 2
    provision(settings, settings.tenants, partitions=args.partitions)
    print(f"created {settings.transport} destinations for: {', '.join(settings.tenants)}")
    return 0


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
    secret = settings.tenant_secrets.get(tenant)
    if args.shared and settings.transport not in ("kafka", "memory"):
        print(
            f"publish --shared: the shared topic exists on kafka and memory, not {settings.transport}",
            file=sys.stderr,
        )
        return 2
    if args.shared and secret is None:
        print(f"publish --shared: no tenant_secrets entry for {tenant}", file=sys.stderr)
        return 2
    storage = AudioStorage(settings.storage)
    sink = open_publisher(settings)
    futures = []
    for path in args.files:
        data = path.read_bytes()
        content_id = f"{path.stem}-{hashlib.sha256(data).hexdigest()[:12]}"
        uri = storage.put(data, f"{base.rstrip('/')}/{content_id}{path.suffix}")
        key = f"{args.key_prefix}{tenant}:{content_id}"
        value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
        record = OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value)
        if args.shared and secret is not None:
            headers = shared_headers(tenant, secret.get_secret_value().encode(), value)
            record = OutRecord("_shared", "arrivals", key.encode(), value, headers=tuple(headers))
        futures.append(sink.publish(record))
        print(json.dumps({"tenant": tenant, "idempotency_key": key, "audio_uri": uri}))
    sink.flush(30)
    for future in futures:
        future.result(30)
    return 0
