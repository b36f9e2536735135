"""The reporting store in PostgreSQL: migrations, batched idempotent inserts, feedback, evaluation.

Inserts are multi-row ``INSERT ... ON CONFLICT DO NOTHING`` in one transaction per batch, so a
batch is durable entirely or not at all, and writing it again (a crash before the offsets were
committed, a replayed verdict) changes nothing. All SQL goes through `services.database`
(connections and error mapping); this module never imports psycopg. Errors: the database down
-> ``RetryableError("database_unavailable")`` from `services.database`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reporting import COMPONENT
from reporting.records import DEAD_LETTER_COLUMNS, FEEDBACK_COLUMNS, VERDICT_COLUMNS, Row
from services.database import Connection, connect, mapped_errors, migrate, migrations_in
from services.errors import PoisonMessage, RetryableError

_COLUMNS = {"verdicts": VERDICT_COLUMNS, "dead_letters": DEAD_LETTER_COLUMNS, "feedback": FEEDBACK_COLUMNS}
#: verdicts and dead letters never change once written; a later decision replaces an earlier one
_ON_CONFLICT = {
    "verdicts": " ON CONFLICT DO NOTHING",
    "dead_letters": " ON CONFLICT DO NOTHING",
    "feedback": " ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET truth = excluded.truth,"
    " decided_at = excluded.decided_at, moderator = excluded.moderator, source = excluded.source,"
    " loaded_at = now() WHERE reporting.feedback.decided_at <= excluded.decided_at",
}
_CASTS = {"payload": "::jsonb", "envelope": "::jsonb"}


def migrate_store(url: str) -> list[str]:
    """Apply the reporting migrations not yet applied; -> the names applied now."""
    return migrate(url, COMPONENT, migrations_in("reporting.migrations"))


def _insert_sql(table: str, rows: int) -> str:
    columns = _COLUMNS[table]
    one = "(" + ", ".join("%s" + _CASTS.get(c, "") for c in columns) + ")"
    return (
        f"INSERT INTO reporting.{table} ({', '.join(columns)}) VALUES "
        + ", ".join([one] * rows)
        + _ON_CONFLICT[table]
    )


def _latest_decisions(values: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One feedback row per upload (the latest decision): an upsert may touch a row once only."""
    latest: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    for row in values:
        key = (row[0], row[1])
        if key not in latest or latest[key][3] <= row[3]:
            latest[key] = row
    return list(latest.values())


@dataclass(frozen=True)
class Written:
    offered: int
    inserted: int


class ReportingStore:
    """One connection, re-opened after the database comes back; not thread-safe."""

    def __init__(self, url: str, *, chunk_rows: int = 500) -> None:
        self.url = url
        self.chunk_rows = chunk_rows
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, rows: Sequence[Row]) -> Written:
        """Insert `rows` in one transaction; durable when this returns. Idempotent.

        Raises RetryableError("database_unavailable") when the server cannot be reached (the
        connection is dropped and the next call opens a new one)."""
        if not rows:
            return Written(0, 0)
        try:
            conn = self._connection()
            inserted = 0
            with mapped_errors(), conn.transaction():
                for table in _COLUMNS:
                    values = [row.values for row in rows if row.table == table]
                    if table == "feedback":
                        values = _latest_decisions(values)
                    for start in range(0, len(values), self.chunk_rows):
                        chunk = values[start : start + self.chunk_rows]
                        flat = [v for row in chunk for v in row]
                        cur = conn.execute(_insert_sql(table, len(chunk)).encode(), flat)
                        inserted += max(0, cur.rowcount)
            return Written(len(rows), inserted)
        except RetryableError:
            self.close()
            raise

    def close_metering_hours(self, before: datetime) -> int:
        """Write the metering rows of every hour that ended before `before` (once each)."""
        conn = self._connection()
        with mapped_errors(), conn.transaction():
            row = conn.execute("SELECT reporting.close_metering_hours(%s)", (before,)).fetchone()
        return int(row[0]) if row else 0


def query(url: str, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of a read-only query."""
    with connect(url) as conn, mapped_errors():
        cur = conn.execute(sql.encode(), params)
        names = [d.name for d in cur.description or []]
        return names, list(cur.fetchall())


# --- feedback --------------------------------------------------------------------------------------

_TRUTHS = {"synthetic": "synthetic", "bona_fide": "bona_fide", "bonafide": "bona_fide", "spoof": "synthetic"}


@dataclass(frozen=True)
class Feedback:
    tenant_id: str
    idempotency_key: str
    truth: str
    decided_at: datetime
    moderator: str | None = None


def parse_feedback_csv(path: Path) -> tuple[list[Feedback], list[tuple[int, str]]]:
    """-> (decisions, [(line number, reason)] for rows that are not). Columns: tenant_id,
    idempotency_key, truth (synthetic / bona_fide), optional decided_at (ISO), moderator."""
    from schemas import validate_tenant

    good: list[Feedback] = []
    bad: list[tuple[int, str]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"tenant_id", "idempotency_key", "truth"} - set(reader.fieldnames or ())
        if missing:
            raise PoisonMessage("bad_feedback_csv", f"{path}: missing columns {sorted(missing)}")
        for line, record in enumerate(reader, start=2):
            try:
                tenant = validate_tenant((record.get("tenant_id") or "").strip())
                key = (record.get("idempotency_key") or "").strip()
                truth = _TRUTHS.get((record.get("truth") or "").strip().lower())
                if not key or truth is None:
                    raise ValueError("needs an idempotency_key and truth synthetic or bona_fide")
                when = (record.get("decided_at") or "").strip()
                decided = datetime.fromisoformat(when) if when else datetime.now(UTC)
                if decided.tzinfo is None:
                    raise ValueError("decided_at needs a UTC offset")
                good.append(Feedback(tenant, key, truth, decided, (record.get("moderator") or None)))
            except ValueError as error:
                bad.append((line, str(error)))
    return good, bad


_FEEDBACK_UPSERT = (
    "INSERT INTO reporting.feedback"
    " (tenant_id, idempotency_key, truth, decided_at, moderator, source)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET"
    " truth = excluded.truth, decided_at = excluded.decided_at, moderator = excluded.moderator,"
    " source = excluded.source, loaded_at = now()"
    " WHERE reporting.feedback.decided_at <= excluded.decided_at"
)


def load_feedback(url: str, decisions: Iterable[Feedback], source: str) -> int:
    """Upsert decisions; a later decision for the same upload replaces an earlier one."""
    count = 0
    with connect(url) as conn, mapped_errors(), conn.transaction():
        for d in decisions:
            conn.execute(
                _FEEDBACK_UPSERT,
                (d.tenant_id, d.idempotency_key, d.truth, d.decided_at, d.moderator, source),
            )
            count += 1
    return count


def scores_with_truth(url: str, model_version: str | None = None) -> dict[str, dict[str, list[float]]]:
    """{model_version: {"bona_fide": [scores], "synthetic": [scores]}} over verdicts with feedback."""
    sql = (
        "SELECT v.model_version, f.truth, v.score FROM reporting.verdicts v JOIN reporting.feedback f"
        " ON f.tenant_id = v.tenant_id AND f.idempotency_key = v.idempotency_key"
    )
    params: tuple[Any, ...] = ()
    if model_version is not None:
        sql += " WHERE v.model_version = %s"
        params = (model_version,)
    _, rows = query(url, sql, params)
    out: dict[str, dict[str, list[float]]] = {}
    for version, truth, score in rows:
        out.setdefault(version, {"bona_fide": [], "synthetic": []})[truth].append(float(score))
    return out
