"""The faust-streaming app that moves every tenant's verdicts, dead letters and moderators'
feedback into PostgreSQL.

    topics ^audioguard\\.(verdicts|dlq|feedback)\\.<tenant>$ -> validate -> batch -> INSERT ... ON CONFLICT
                                                  └ invalid -> audioguard.reporting-dlq (reason in headers)

Delivery: events are acked by hand (`Stream.noack_take`) only after their batch's transaction
committed, or their dead letter was confirmed by the broker; faust commits only acked offsets. A
crash re-delivers at most the uncommitted tail, and the unique keys make writing it again a no-op.
The database down: the batch is retried with backoff until it lands (no ack, no new batch, so
the consumer's buffers fill and fetching stops); `audioguard_reporting_lag_messages` grows and
`audioguard_reporting_database_up` is 0 meanwhile. Nothing a record contains stops the app.

This is the only module that imports faust.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient

from reporting.records import REPORTING_DLQ_TOPIC, TOPIC_PATTERN, Row, row_for
from reporting.store import ReportingStore
from services import metrics
from services.errors import AudioguardError, PoisonMessage, RetryableError

log = logging.getLogger("audioguard.reporting")


@dataclass(frozen=True)
class ReportingConfig:
    bootstrap_servers: str
    database_url: str
    app_id: str = "audioguard-reporting"
    batch_records: int = 500
    batch_seconds: float = 0.5
    #: backoff while the database is down: doubles from retry_initial up to retry_max, forever
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 5.0
    #: metering hours are closed (written once) this long after they end, for late verdicts
    metering_grace: timedelta = timedelta(hours=1)
    session_timeout_seconds: float = 6.0
    commit_interval_seconds: float = 1.0
    data_dir: Path = Path("/tmp/audioguard-reporting")
    #: how often the broker is asked for new tenants' topics
    discover_seconds: float = 10.0
    #: only these tenants' topics (empty: every tenant's, by TOPIC_PATTERN)
    tenants: tuple[str, ...] = ()

    def wants(self, topic: str) -> bool:
        match = _PATTERN.match(topic)
        return bool(match) and (not self.tenants or topic.rsplit(".", 1)[1] in self.tenants)


_PATTERN = re.compile(TOPIC_PATTERN)


async def matching_topics(config: ReportingConfig) -> list[str]:
    """The verdict and dead-letter topics on the broker now that the app should read."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap_servers.split(","))
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(name for name in names if config.wants(name))


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items]


class _Lag:
    """Next offset to write per partition; lag = high watermark - that."""

    def __init__(self) -> None:
        self.next_offset: dict[tuple[str, int], int] = {}

    def written(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.next_offset[key] = max(self.next_offset.get(key, 0), offset + 1)

    def refresh(self, app: faust.App) -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - before the first fetch there is no high watermark
                continue
            if high is None:
                continue
            behind = max(0, int(high) - self.next_offset.get((tp.topic, tp.partition), 0))
            metrics.REPORTING_LAG_MESSAGES.labels(tp.topic, str(tp.partition)).set(behind)


def build_app(config: ReportingConfig, topics: Sequence[str]) -> faust.App:
    """The app, reading `topics` (and those that appear later, found every discover_seconds).

    faust's aiokafka driver cannot subscribe by pattern, so the app lists the broker's topics
    itself and re-subscribes when a new tenant's topic matches."""
    app = faust.App(
        config.app_id,
        broker=[f"kafka://{server}" for server in config.bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(config.data_dir),
        web_enabled=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=config.session_timeout_seconds,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=config.commit_interval_seconds,
        stream_buffer_maxsize=max(4096, 2 * config.batch_records),
    )
    source = app.topic(*topics, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")  # fmt: skip
    # faust waits 45 s after a change before re-subscribing (to batch agent restarts); a new
    # tenant's topic is the only change here
    app.topics._resubscribe_sleep_lock_seconds = min(5.0, config.discover_seconds)  # type: ignore[attr-defined]
    dead_letters = app.topic(REPORTING_DLQ_TOPIC, key_serializer="raw", value_serializer="raw")
    store = ReportingStore(config.database_url)
    lag = _Lag()

    async def write(rows: Sequence[Row]) -> None:
        delay = config.retry_initial_seconds
        while True:
            try:
                written = await asyncio.to_thread(store.write, rows)
            except RetryableError as error:
                metrics.REPORTING_DATABASE_UP.set(0)
                lag.refresh(app)
                log.warning("reporting store unavailable; batch held", extra={"error": str(error)})
                await asyncio.sleep(delay)
                delay = min(config.retry_max_seconds, delay * 2)
                continue
            metrics.REPORTING_DATABASE_UP.set(1)
            for table in ("verdicts", "dead_letters", "feedback"):
                offered = sum(1 for row in rows if row.table == table)
                if offered:
                    metrics.REPORTING_ROWS.labels(table, "offered").inc(offered)
            metrics.REPORTING_ROWS.labels("all", "inserted").inc(written.inserted)
            return

    async def dead_letter(event: Any, reason: str, message: str) -> None:
        msg = event.message
        headers = _headers(msg.headers) + [
            ("ag-reporting-reason", reason.encode()),
            ("ag-reporting-error", message[:2000].encode("utf-8", "replace")),
            ("ag-reporting-source", f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
        ]
        delay = config.retry_initial_seconds
        while True:
            try:
                future = await dead_letters.send(key=msg.key, value=msg.value or b"", headers=headers)
                await future
                break
            except Exception as error:  # noqa: BLE001 - never ack a record whose dead letter is unconfirmed
                log.warning("reporting dead letter not confirmed; retrying", extra={"error": repr(error)})
                await asyncio.sleep(delay)
                delay = min(config.retry_max_seconds, delay * 2)
        metrics.REPORTING_INVALID.labels(metrics.bounded_reason(reason)).inc()

    @app.agent(source, name="verdicts-to-postgres")
    async def sink(stream: Any) -> None:
        async for events in stream.noack_take(config.batch_records, within=config.batch_seconds):
            rows: list[Row] = []
            for event in events:
                msg = event.message
                try:
                    headers = _headers(msg.headers)
                    rows.append(row_for(msg.topic, msg.partition, msg.offset, msg.value, headers))
                except PoisonMessage as error:
                    await dead_letter(event, error.reason, str(error))
                except (AudioguardError, ValueError, TypeError) as error:
                    await dead_letter(event, "invalid_record", repr(error))
            await write(rows)
            for event in events:
                await stream.ack(event)
                lag.written(event.message.topic, event.message.partition, event.message.offset)
            lag.refresh(app)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def refresh_lag() -> None:
        lag.refresh(app)

    @app.timer(interval=config.discover_seconds)  # type: ignore[untyped-decorator]
    async def discover() -> None:
        try:
            found = await matching_topics(config)
        except Exception as error:  # noqa: BLE001 - the broker briefly away: next tick
            log.warning("topic discovery failed", extra={"error": repr(error)})
            return
        new = sorted(set(found) - set(source.topics))
        if new:
            log.info("new tenant topics; re-subscribing", extra={"topics": new})
            source.topics = sorted(set(source.topics) | set(new))
            app.topics.discard(source)
            app.topics.add(source)

    @app.timer(interval=60.0)  # type: ignore[untyped-decorator]
    async def close_metering() -> None:
        before = datetime.now(UTC) - config.metering_grace
        try:
            closed = await asyncio.to_thread(store.close_metering_hours, before)
        except RetryableError:
            return  # the next tick tries again; hours are written once whenever it lands
        if closed:
            log.info("metering hours closed", extra={"rows": closed})

    return app


def run(config: ReportingConfig, *, log_level: str = "info") -> None:
    """Run the app in this process until SIGTERM / SIGINT (faust's worker handles both)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    topics = asyncio.run(matching_topics(config))
    while not topics:
        log.info("no verdict or dead-letter topics yet; waiting", extra={"pattern": TOPIC_PATTERN})
        time.sleep(config.discover_seconds)
        topics = asyncio.run(matching_topics(config))
    app = build_app(config, topics)
    # override_logging=False: faust's worker would otherwise clear the root handlers and install
    # its own coloured text handler, so its lines (and ours) would stop being the JSON that
    # `configure_logging` set up for the log pipeline
    worker = faust.Worker(app, loglevel=log_level, quiet=True, override_logging=False)
    worker.spinner = None  # its terminal escapes would land between the JSON lines
    started = time.monotonic()
    try:
        worker.execute_from_commandline()
    finally:
        log.info("reporting app stopped", extra={"ran_seconds": round(time.monotonic() - started, 1)})
