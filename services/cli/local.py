"""`audioguard broker` and `audioguard demo`: the embedded servers and the whole pipeline on them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from consumers.transports.registry import transport_names
from services.cli.common import wait_for_signal


def add_parser(subparsers: Any) -> None:
    broker = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, memory storage)",
        description="Start Tansu on 127.0.0.1:PORT and keep it running until Ctrl-C / SIGTERM. "
        "Its data lives in memory and is gone when it stops.",
    )
    broker.add_argument("--port", type=int, default=9092, help="listen port (default 9092)")
    broker.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    broker.set_defaults(handler=_broker)

    demo = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on local servers with bundled clips",
        description="Starts the transport's local server (the embedded Tansu broker, Google's Pub/Sub "
        "emulator, or moto for Kinesis and S3; no server at all for memory), creates three tenants, "
        "publishes the bundled clips (plus two bad events), runs a worker, prints each verdict and a "
        "summary table, stops.",
    )
    # the demo runs its worker in this process, so the in-memory broker works too
    demo.add_argument("--transport", choices=transport_names(), default="kafka")
    demo.add_argument("--repeat", type=int, default=1, help="publish the clip set this many times")
    demo.add_argument("--timeout", type=float, default=110.0, help="give up after this many seconds")
    demo.add_argument(
        "--clips", type=Path, default=None, help="a folder with labels.csv (file,label,...) to use instead"
    )
    demo.add_argument(
        "--api",
        action="store_true",
        help="also run one detection over the HTTP API (needs database.url / AUDIOGUARD_DATABASE__URL: "
        "PostgreSQL for the API's keys and detections)",
    )
    demo.set_defaults(handler=_demo)


def _broker(args: argparse.Namespace) -> int:
    from services.local.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port, host=args.host) as broker:
        print(f"broker listening on {broker.bootstrap_servers} (Ctrl-C to stop)", flush=True)
        wait_for_signal()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from services.tools.demo import run_demo

    started = time.monotonic()
    from services.tools.demo import DEMO_CLIPS

    database_url = None
    if args.api:
        from services.cli.common import settings_from

        database_url = settings_from(args).database.url
        if not database_url:
            print(
                "demo --api: set database.url (AUDIOGUARD_DATABASE__URL=postgresql://user@host:5432/db)",
                file=sys.stderr,
            )
            return 2
    code = run_demo(
        transport=args.transport,
        repeat=args.repeat,
        timeout=args.timeout,
        clips_dir=args.clips or DEMO_CLIPS,
        api_database_url=database_url,
    )
    print(f"demo finished in {time.monotonic() - started:.1f}s")
    return code
