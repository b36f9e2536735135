"""The `audioguard` command line: one entry point, one sub-command per job.

Each sub-command lives in the module of its concern and exposes `add_parser(subparsers)`;
this module only wires them together and sets up logging. Heavy imports (torch, SDKs)
happen inside the handlers so `audioguard --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

#: modules that contribute sub-commands, in the order `--help` lists them
COMMAND_MODULES = [
    "services.cli.schemas",
    "services.cli.local",
    "services.cli.platform",
    "services.cli.worker",
    "services.cli.detector",
    "services.cli.model",
    "services.cli.chaos",
    "services.cli.dlq",
    "services.cli.loadtest",
    "services.cli.bench",
    "services.cli.report",
    "services.cli.api",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioguard",
        description=(
            "Streaming detection of AI-generated audio. Platforms publish an arrival event per "
            "upload; workers fetch the audio, score it with the shipped detector and publish a "
            "verdict per upload to the tenant's verdict topic."
        ),
        epilog=(
            "Settings come from --config FILE (TOML) or $AUDIOGUARD_CONFIG, then AUDIOGUARD_* "
            "environment variables (nested with __, e.g. AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS), "
            "then flags. Run `audioguard COMMAND --help` for each command."
        ),
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from services.settings import ConfigError

    try:
        code = args.handler(args)
    except ConfigError as exc:
        # a settings mistake is the operator's, and one line says it; a traceback would bury it
        print(f"audioguard: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)
