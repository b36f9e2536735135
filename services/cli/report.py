"""`audioguard report migrate|run|feedback load|model|tenant`: the reporting pipeline into PostgreSQL.

Argument parsing only; the work is in `reporting.commands` and `reporting.app`. The database
comes from --database-url, else settings `database.url` (env AUDIOGUARD_DATABASE__URL); Kafka
from --bootstrap-servers, else `kafka.bootstrap_servers`. Handlers import lazily (faust, psycopg).
Exit codes: 0 done; 1 refused input rows; 2 usage (no database configured); 3 fatal.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: settings database.url)")


def add_parser(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report",
        help="verdicts, dead letters, feedback and metering in PostgreSQL (faust app, evaluation)",
        description="The reporting pipeline: a faust-streaming app copies every tenant's verdicts and "
        "dead letters into PostgreSQL exactly once per (tenant, idempotency key, model version); "
        "feedback (moderators' ground truth) is joined to them for evaluation. See docs/reporting.md.",
    )
    sub = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND", required=True)

    migrate = sub.add_parser("migrate", help="create / upgrade the reporting tables and views")
    _where(migrate)
    migrate.set_defaults(handler=_migrate)

    run = sub.add_parser(
        "run",
        help="run the faust app: audioguard.verdicts.* and audioguard.dlq.* -> PostgreSQL",
        description="Consumes every tenant's verdict and dead-letter topics by pattern, validates each "
        "record (invalid -> audioguard.reporting-dlq with its reason), inserts in batches and commits "
        "offsets only after the rows are durable. The database down pauses it; it resumes by itself.",
    )
    _where(run)
    run.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: settings)")
    run.add_argument("--tenant", action="append", dest="tenants", metavar="TENANT",
                     help="only this tenant's topics (repeatable; default every tenant's)")  # fmt: skip
    run.add_argument("--app-id", default="audioguard-reporting", help="faust app id = consumer group")
    run.add_argument("--batch-records", type=int, default=500, help="rows per INSERT batch at most")
    run.add_argument("--batch-seconds", type=float, default=0.5, help="wait at most this for a batch")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (lag, rows)")
    run.add_argument("--data-dir", type=Path, default=Path("/tmp/audioguard-reporting"),
                     help="faust's local data directory")  # fmt: skip
    run.add_argument("--metering-grace-minutes", type=float, default=60.0,
                     help="close (write once) an hour's metering this long after it ends")  # fmt: skip
    run.set_defaults(handler=_run)

    feedback = sub.add_parser("feedback", help="moderators' decisions (ground truth)")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    load = feedback_sub.add_parser(
        "load",
        help="load a CSV: tenant_id,idempotency_key,truth[,decided_at,moderator]",
        description="truth is synthetic or bona_fide; decided_at ISO 8601 with offset (default now). "
        "A later decision for the same upload replaces an earlier one. Refused lines are listed (exit 1).",
    )
    _where(load)
    load.add_argument("file", type=Path, help="the CSV file")
    load.set_defaults(handler=_feedback_load)

    tenant = sub.add_parser(
        "tenant",
        help="a tenant's monthly report: HTML (embedded PNG charts) and CSV",
        description="Uploads, audio hours, labels, latency and dead letters per day of the month, "
        "from the reporting views. The HTML is self-contained (no scripts, no external requests).",
    )
    _where(tenant)
    tenant.add_argument("tenant", help="the tenant id")
    tenant.add_argument("--month", required=True, type=_month, help="YYYY-MM (UTC)")
    tenant.add_argument("--out", type=Path, default=Path("."), help="directory for the two files")
    tenant.set_defaults(handler=_tenant)

    model = sub.add_parser("model", help="evaluation per model version against feedback (EER, confusion)")
    _where(model)
    model.add_argument("--model-version", help="only this model version")
    model.set_defaults(handler=_model)


def _month(text: str) -> str:
    from datetime import datetime

    try:
        datetime.strptime(text, "%Y-%m")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM") from error
    return text


def _tenant(args: argparse.Namespace) -> int:
    from reporting import commands

    return _guarded(
        args, lambda url, console: commands.tenant_report(url, args.tenant, args.month, args.out, console)
    )


def _url(args: argparse.Namespace) -> str | None:
    if args.database_url:
        return str(args.database_url)
    from services.settings import load_settings

    return load_settings(getattr(args, "config", None)).database.url


def _guarded(args: argparse.Namespace, work: Any) -> int:
    from rich.console import Console

    from reporting.commands import NO_DATABASE
    from services.errors import FatalError, PoisonMessage, RetryableError

    console = Console()
    url = _url(args)
    if not url:
        print(f"audioguard: error: {NO_DATABASE}", file=sys.stderr)
        return 2
    try:
        return int(work(url, console))
    except (FatalError, RetryableError) as error:
        print(f"audioguard: error: {error}", file=sys.stderr)
        return 3
    except PoisonMessage as error:
        print(f"audioguard: error: {error}", file=sys.stderr)
        return 2


def _migrate(args: argparse.Namespace) -> int:
    from reporting import commands

    return _guarded(args, commands.migrate)


def _feedback_load(args: argparse.Namespace) -> int:
    from reporting import commands

    return _guarded(args, lambda url, console: commands.feedback_load(url, args.file, console))


def _model(args: argparse.Namespace) -> int:
    from reporting import commands

    return _guarded(args, lambda url, console: commands.model_report(url, args.model_version, console))


def _run(args: argparse.Namespace) -> int:
    def work(url: str, console: Any) -> int:
        from reporting.app import ReportingConfig, run
        from reporting.store import migrate_store
        from services.logs import configure_logging
        from services.settings import load_settings

        settings = load_settings(getattr(args, "config", None))
        configure_logging(settings.log_level, settings.log_format)
        migrate_store(url)
        if args.metrics_port is not None:
            from services.health import start_health_server

            start_health_server(args.metrics_port, ready=lambda: True, alive=lambda: True)
        run(
            ReportingConfig(
                bootstrap_servers=args.bootstrap_servers or settings.kafka.bootstrap_servers,
                database_url=url,
                app_id=args.app_id,
                batch_records=args.batch_records,
                batch_seconds=args.batch_seconds,
                metering_grace=timedelta(minutes=args.metering_grace_minutes),
                session_timeout_seconds=settings.kafka.session_timeout_ms / 1000,
                data_dir=args.data_dir,
                tenants=tuple(args.tenants or ()),
            )
        )
        return 0

    return _guarded(args, work)
