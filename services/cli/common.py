"""What every sub-command shares: transport flags and settings from file, environment and flags."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from consumers.transports.registry import transport_names

#: what a command in its own process can talk to: the in-process "memory" broker is left out
TRANSPORTS = transport_names(shared=True)


def transport_flags(parser: argparse.ArgumentParser) -> None:
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


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)
