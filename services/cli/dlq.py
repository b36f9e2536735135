"""`audioguard dlq stats|list|show|replay`: on-call's dead-letter tool, on all three transports.

Reads a tenant's DLQ through `dlq.queues` (Kafka: the tool's own consumer group; Pub/Sub:
`dlq-<tenant>-replay`; Kinesis: `audioguard-dlq-<tenant>` with store checkpoints), filters,
prints tables (or JSON lines with --json) and replays with `dlq.replay`. `stats`, `list` and
`show` never remove anything; `replay --dry-run` publishes and removes nothing.

Every replay run (dry runs too) writes one audit line: JSON on stderr, and appended to
--audit-log / $AUDIOGUARD_DLQ_AUDIT_LOG when set.

Exit codes: 0 done; 1 some re-publications failed (they stay in the queue); 2 usage
(nothing found for `show`, bad flags); 3 fatal (missing topic, auth, bad config); 130 a
replay stopped by Ctrl-C (what was confirmed is removed, the audit line is still written).
This module must never import a broker SDK or torch; handlers import lazily.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.common import TRANSPORTS

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from dlq.inspect import DeadLetterFilter, DeadLetterQueue, DeadLetterRecord

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*s)?\s*$")


def parse_rate(text: str) -> float:
    """`20`, `20/s` or `2.5/s` -> records per second."""
    match = _RATE_RE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive rate such as 20/s")
    return float(match.group(1))


def _when(text: str) -> datetime:
    from dlq.inspect import parse_when

    try:
        return parse_when(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where")
    group.add_argument("--tenant", action="append", dest="tenants", metavar="TENANT", required=True)
    group.add_argument("--transport", choices=TRANSPORTS, help="message transport (default: settings, kafka)")
    group.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port[,host:port]")
    group.add_argument(
        "--group",
        default=None,
        help="Kafka consumer group / Kinesis checkpoint name of the tool (default audioguard-dlq-tool)",
    )
    group.add_argument(
        "--from-beginning",
        action="store_true",
        help="Kafka/Kinesis: also read dead letters already replayed (removed) by this tool",
    )
    parser.add_argument("--json", action="store_true", help="JSON output instead of tables")


def _filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all given must hold)")
    group.add_argument("--category", choices=("poison", "retries_exhausted", "fatal"))
    group.add_argument("--error-class", help="exact, or its last dotted part (PoisonMessage)")
    group.add_argument("--reason", help="text in the reason code or the error message (case-insensitive)")
    group.add_argument("--since", type=_when, help="last failure at or after: 30m, 1h, 2d or an ISO time")
    group.add_argument("--until", type=_when, help="last failure at or before: 30m, 1h, 2d or an ISO time")
    group.add_argument("--content-id", help="the arrival's content id")
    group.add_argument("--key", dest="idempotency_key", help="the arrival's idempotency key")
    group.add_argument("--min-attempts", type=int, help="attempt count at least")
    group.add_argument("--max-attempts", type=int, help="attempt count at most")


def add_parser(subparsers: Any) -> None:
    dlq = subparsers.add_parser(
        "dlq",
        help="inspect and replay a tenant's dead letters (Kafka, Pub/Sub, Kinesis)",
        description="On-call's dead-letter tool. stats/list/show never remove anything; replay "
        "removes a dead letter only after its re-publication is confirmed.",
    )
    sub = dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND", required=True)

    stats = sub.add_parser("stats", help="counts by category, error class and reason; oldest and newest")
    _common(stats)
    stats.add_argument("--since", type=_when, help="only dead letters that failed since: 30m, 1h, 2d, ISO")
    stats.set_defaults(handler=_stats)

    listing = sub.add_parser("list", help="one line per dead letter matching the filters")
    _common(listing)
    _filters(listing)
    listing.add_argument("--max", type=int, default=None, help="print at most this many")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="one dead letter: envelope, every header, payload, the audio")
    _common(show)
    show.add_argument("ref", help="as printed by `dlq list`: Kafka PARTITION:OFFSET, Pub/Sub message id, ...")
    show.set_defaults(handler=_show)

    replay = sub.add_parser(
        "replay",
        help="republish matching dead letters (filters, --dry-run, --rate, --limit, provenance)",
        description="Republishes each matching dead letter's original payload (key unchanged) with "
        "provenance headers, to the tenant's arrivals or a Kafka retry tier, then removes it from the "
        "queue once the broker confirmed. Re-replaying is harmless: the verdict store answers an "
        "idempotency key it already has.",
    )
    _common(replay)
    _filters(replay)
    replay.add_argument("--to", choices=("original", "retry-tier"), default="original")
    replay.add_argument("--tier", type=int, default=0, help="retry tier index for --to retry-tier (Kafka)")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; change nothing")
    replay.add_argument("--rate", type=parse_rate, default=None, help="at most N/s (e.g. 20/s)")
    replay.add_argument("--limit", type=int, default=None, help="replay at most this many")
    replay.add_argument(
        "--max-replays",
        type=int,
        default=3,
        help="loop guard: refuse dead letters already replayed this many times (default 3)",
    )
    replay.add_argument("--operator", default=None, help="who runs this (default: the login name)")
    replay.add_argument("--audit-log", type=Path, default=None, help="append the audit line to this file")
    replay.set_defaults(handler=_replay)


# -- plumbing -------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Any:
    from services.cli.common import settings_from

    return settings_from(args)


def _tenant(args: argparse.Namespace) -> str:
    if len(args.tenants) != 1:
        raise SystemExit("audioguard dlq: name exactly one --tenant")
    from schemas import validate_tenant

    return validate_tenant(args.tenants[0])


def _open(args: argparse.Namespace) -> DeadLetterQueue:
    from dlq.queues import DLQ_TOOL_GROUP, open_dead_letters

    return open_dead_letters(
        _settings(args), _tenant(args), group=args.group or DLQ_TOOL_GROUP, from_beginning=args.from_beginning
    )


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    from dlq.inspect import DeadLetterFilter

    return DeadLetterFilter(
        category=getattr(args, "category", None),
        error_class=getattr(args, "error_class", None),
        reason=getattr(args, "reason", None),
        since=getattr(args, "since", None),
        until=getattr(args, "until", None),
        content_id=getattr(args, "content_id", None),
        idempotency_key=getattr(args, "idempotency_key", None),
        min_attempts=getattr(args, "min_attempts", None),
        max_attempts=getattr(args, "max_attempts", None),
    )


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    # a pipe gets 80 columns by default, which folds every table: on-call pastes these into tickets
    width = None if (sys.stderr if stderr else sys.stdout).isatty() else 160
    return Console(stderr=stderr, width=width, highlight=False)


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from services.errors import FatalError, RetryableError

        try:
            return int(handler(args))
        except (FatalError, RetryableError) as error:
            print(f"audioguard dlq: {error}", file=sys.stderr)
            return 3

    return run


def _age(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{when.isoformat(timespec='seconds')} ({seconds // size}{unit} ago)"
    return f"{when.isoformat(timespec='seconds')} ({seconds}s ago)"


# -- stats / list / show -----------------------------------------------------------------------


@_guarded
def _stats(args: argparse.Namespace) -> int:
    from dlq.inspect import DeadLetterFilter, stats

    queue = _open(args)
    try:
        result = stats(DeadLetterFilter(since=args.since).select(queue.read()), unreadable=queue.unreadable)
    finally:
        queue.close()
    if args.json:
        print(json.dumps(result.as_json() | {"queue": queue.describe()}))
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{queue.describe()}[/bold]: {result.total} dead letters", end="")
    console.print(f" ({result.unreadable} unreadable, {result.replayed_before} replayed before)")
    console.print(f"oldest failure: {_age(result.oldest)}   newest failure: {_age(result.newest)}")
    for title, counts in (
        ("category", result.by_category),
        ("error class", result.by_error_class),
        ("reason", result.by_reason),
    ):
        table = Table(title=f"by {title}", title_justify="left")
        table.add_column(title)
        table.add_column("count", justify="right")
        for name, count in counts.items():
            table.add_row(name, str(count))
        console.print(table)
    return 0


@_guarded
def _list(args: argparse.Namespace) -> int:
    queue = _open(args)
    chosen = _filter(args)
    try:
        records = list(chosen.select(queue.read()))
    finally:
        queue.close()
    shown = records[: args.max] if args.max is not None else records
    if args.json:
        for record in shown:
            print(json.dumps(record.summary()))
        return 0
    from rich.table import Table

    table = Table(title=f"{queue.describe()}: {len(records)} matching", title_justify="left")
    for column in (
        "ref",
        "category",
        "reason",
        "error class",
        "attempt",
        "replays",
        "content id",
        "last failed",
    ):
        table.add_column(column)
    for record in shown:
        env = record.envelope
        table.add_row(
            record.ref,
            env.category,
            env.reason,
            env.error_class.rsplit(".", 1)[-1],
            str(env.attempt),
            str(env.replay_count),
            record.content_id or "-",
            env.last_failed_at.isoformat(timespec="seconds"),
        )
    _console().print(table)
    return 0


def _audio(settings: Any, record: DeadLetterRecord) -> dict[str, Any]:
    """What the arrival's audio URI points to now: reachable (bytes, sha256) or why not."""
    from urllib.parse import urlsplit

    from services.errors import AudioguardError
    from services.storage import AudioStorage

    arrival = record.arrival() or {}
    uri = arrival.get("audio_uri")
    if not isinstance(uri, str):
        return {"audio_uri": None, "status": "payload names no audio_uri"}
    info: dict[str, Any] = {"audio_uri": uri}
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = Path(parts.path)
        info["local_file"] = f"{path.stat().st_size} bytes" if path.is_file() else "does not exist"
    try:
        data = AudioStorage(settings.storage).fetch(
            uri, record.envelope.tenant_id, expected_sha256=arrival.get("sha256")
        )
    except AudioguardError as error:
        info["status"] = f"a worker would refuse it now: {error.reason}: {error.message}"
        return info
    import hashlib

    info["status"] = f"reachable: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    return info


def _payload_text(payload: bytes) -> str:
    try:
        return json.dumps(json.loads(payload), indent=2, sort_keys=True)
    except (ValueError, UnicodeDecodeError):
        preview = payload[:2048]
        return f"{len(payload)} bytes, not JSON: {preview!r}{'…' if len(payload) > 2048 else ''}"


@_guarded
def _show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    queue = _open(args)
    try:
        record = next((r for r in queue.read() if r.ref == args.ref), None)
    finally:
        queue.close()
    if record is None:
        print(f"audioguard dlq show: no dead letter {args.ref} in {queue.describe()}", file=sys.stderr)
        return 2
    audio = _audio(settings, record)
    headers = [(name, value.decode("utf-8", errors="replace")) for name, value in record.headers]
    if args.json:
        print(
            json.dumps(
                {
                    "ref": record.ref,
                    "location": dict(record.location),
                    "key": record.key.decode("utf-8", "replace") if record.key else None,
                    "envelope": record.envelope.model_dump(mode="json", exclude_none=True),
                    "headers": headers,
                    "payload": record.payload.decode("utf-8", "replace"),
                    "audio": audio,
                },
                default=str,
            )
        )
        return 0
    from rich.table import Table

    console = _console()
    console.print(f"[bold]dead letter {record.ref}[/bold] in {queue.describe()}")
    envelope = Table(title="envelope", title_justify="left", show_header=False)
    for name, value in record.envelope.model_dump(mode="json", exclude_none=True).items():
        envelope.add_row(name, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(envelope)
    header_table = Table(title="headers", title_justify="left")
    header_table.add_column("name")
    header_table.add_column("value", overflow="fold")
    for name, value in headers:
        header_table.add_row(name, value)
    console.print(header_table)
    console.print("[bold]payload[/bold]", record.key and f"(key {record.key.decode('utf-8', 'replace')})")
    env = record.envelope
    if env.payload_truncated:
        where = f"the full payload is at {env.payload_uri}" if env.payload_uri else _TRUNCATED
        console.print(
            f"only the first {len(record.payload)} of {env.payload_size} bytes are in the record; {where}",
            markup=False,
        )
    console.print(_payload_text(record.payload), markup=False)
    console.print("[bold]audio[/bold]")
    for name, value in audio.items():
        console.print(f"  {name}: {value}", markup=False)
    return 0


# -- replay ------------------------------------------------------------------------------------

_TRUNCATED = (
    "its payload was over the DLQ record limit and could not be stored (no dlq.payload_uri, or the "
    "area was unwritable), so only its first bytes exist; republishing them would only fail again"
)


def _handlers(settings: Any) -> dict[str, Callable[[DeadLetterRecord], None]]:
    """Dead letters that are not arrivals: a dead webhook (the API's) is re-queued in the API's
    database, never republished to the arrivals (needs database.url; without it they stay)."""
    from api.webhooks import WEBHOOK_DEAD_LETTER_REASONS, requeue_webhook

    def requeue(record: DeadLetterRecord) -> None:
        if not settings.database.url:
            raise ValueError("a dead webhook is re-queued in the API's database: set database.url")
        requeue_webhook(settings.database.url, record.envelope.tenant_id, record.payload)

    return dict.fromkeys(WEBHOOK_DEAD_LETTER_REASONS, requeue)


def _payloads(settings: Any) -> Any:
    """The tenants' dead-letter areas (where truncated dead letters' payloads are), or None."""
    if not settings.dlq.payload_uri:
        return None
    from services.storage import AudioStorage, DeadLetterPayloads

    return DeadLetterPayloads(AudioStorage(settings.storage), settings.dlq.payload_uri)


def _audit(args: argparse.Namespace, line: dict[str, Any]) -> None:
    text = json.dumps(line, default=str, sort_keys=True)
    print(text, file=sys.stderr, flush=True)
    target = args.audit_log or (
        Path(os.environ["AUDIOGUARD_DLQ_AUDIT_LOG"]) if os.environ.get("AUDIOGUARD_DLQ_AUDIT_LOG") else None
    )
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")


@_guarded
def _replay(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from dlq.replay import ReplayOptions, replay_dead_letters

    tenant = _tenant(args)
    try:
        options = ReplayOptions(
            to=args.to,
            tier=args.tier,
            rate=args.rate,
            limit=args.limit,
            dry_run=args.dry_run,
            operator=args.operator or getpass.getuser(),
            max_replays=args.max_replays,
        )
    except ValueError as error:
        print(f"audioguard dlq replay: {error}", file=sys.stderr)
        return 2
    chosen = _filter(args)
    settings = _settings(args)
    started = datetime.now(UTC)
    queue = _open(args)
    try:
        records = list(chosen.select(queue.read()))
        destination = queue.destination(options.to, options.tier)
        console = _console()
        err = _console(stderr=True)
        if options.dry_run:
            console.print(f"[bold]dry run[/bold]: nothing is published or removed; destination {destination}")
        progress = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=err,
            disable=options.dry_run or not sys.stderr.isatty(),
        )
        wanted = len(records) if options.limit is None else min(len(records), options.limit)
        task = progress.add_task("replay", total=wanted, status="")

        handlers = _handlers(settings)

        def on_record(record: DeadLetterRecord, outcome: str) -> None:
            if options.dry_run:
                state = {
                    "refused_loop": "refused (loop guard)",
                    "refused_truncated": "refused (truncated)",
                }.get(outcome, "would replay")
                target = "the API's webhook queue" if record.envelope.reason in handlers else destination
                console.print(
                    f"{state}: {record.ref} {record.envelope.category}/{record.envelope.reason} "
                    f"key={record.idempotency_key} replays={record.envelope.replay_count} -> {target}",
                    markup=False,
                )
                return
            if outcome == "refused_loop":
                err.print(
                    f"refused (loop guard, replayed {record.envelope.replay_count} times): {record.ref}",
                    markup=False,
                )
                return
            if outcome == "refused_truncated":
                err.print(f"refused (truncated): {record.ref}: {_TRUNCATED}", markup=False)
                return
            progress.update(task, advance=1, status=outcome)

        # Ctrl-C asks the run to stop between two records, so no confirmed publish is left
        # unremoved; a second Ctrl-C interrupts at once (the rest still stays queued)
        stopping = threading.Event()
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            if stopping.is_set():
                raise KeyboardInterrupt
            stopping.set()

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGINT, on_sigint)
        try:
            with progress:
                summary = replay_dead_letters(
                    queue,
                    records,
                    options,
                    on_record=on_record,
                    stop=stopping.is_set,
                    payloads=_payloads(settings),
                    handlers=handlers,
                )
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
    finally:
        queue.close()
    _audit(
        args,
        {
            "event": "dlq replay",
            "replay_id": summary.replay_id,
            "operator": options.operator,
            "tenant": tenant,
            "transport": settings.transport,
            "queue": queue.describe(),
            "destination": summary.destination,
            "filters": chosen.describe(),
            "options": {
                "to": options.to,
                "tier": options.tier,
                "rate": options.rate,
                "limit": options.limit,
                "max_replays": options.max_replays,
                "dry_run": options.dry_run,
            },
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "summary": summary.as_json(),
        },
    )
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        table = Table(title=f"replay {summary.replay_id}", title_justify="left", show_header=False)
        rows: list[tuple[str, object]] = [
            ("destination", summary.destination),
            ("matched the filters", summary.matched),
            (
                "would replay (dry run)" if options.dry_run else "replayed and removed",
                summary.would_replay if options.dry_run else summary.removed,
            ),
            ("refused by the loop guard", summary.refused_loop),
            ("refused: truncated, payload not stored", summary.refused_truncated),
            ("failed (left in the queue)", summary.failed),
            (
                "left by --limit",
                summary.matched
                - summary.refused_loop
                - summary.refused_truncated
                - summary.replayed
                - summary.failed
                - summary.would_replay,
            ),
            ("elapsed", f"{summary.elapsed_seconds:.2f}s"),
            ("measured rate", f"{summary.measured_rate:.1f}/s" if summary.measured_rate else "-"),
        ]
        for name, value in rows:
            table.add_row(name, str(value))
        for reason, count in summary.by_reason.most_common():
            table.add_row(f"  reason {reason}", str(count))
        _console().print(table)
        for problem in summary.errors[:10]:
            print(f"failed: {problem}", file=sys.stderr)
    if summary.interrupted:
        print("interrupted: the rest of the matching dead letters are still in the queue", file=sys.stderr)
        return 130
    return 1 if summary.failed else 0
