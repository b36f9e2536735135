"""The shadow-scoring table in PostgreSQL (services.database): where a worker's challenger
results go, and what `audioguard model compare` reads. Customers never see these rows.

This module must never import psycopg itself (services.database is the one adapter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services import database

from ._compare import ShadowRow

__all__ = ["COLUMNS", "ShadowTable"]

COLUMNS = (
    "tenant",
    "idempotency_key",
    "content_id",
    "champion_version",
    "champion_label",
    "champion_score",
    "challenger_version",
    "challenger_label",
    "challenger_score",
    "windows",
    "champion_seconds_per_window",
    "challenger_seconds_per_window",
    "worker_id",
)


class ShadowTable:
    def __init__(self, url: str) -> None:
        self.url = url
        self._migrated = False

    def migrate(self) -> None:
        if not self._migrated:
            database.migrate(self.url, "shadow", database.migrations_in("services.registry.migrations"))
            self._migrated = True

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert shadow rows (dicts with COLUMNS); one transaction. Errors are the project's."""
        if not rows:
            return
        self.migrate()
        placeholders = ", ".join(["%s"] * len(COLUMNS))
        sql = f"INSERT INTO shadow_scores ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        with database.connect(self.url) as conn, database.mapped_errors():
            with conn.cursor() as cursor:
                cursor.executemany(sql, [tuple(row[c] for c in COLUMNS) for row in rows])
            conn.commit()

    def read(self, *, tenants: Sequence[str] = (), challenger: str | None = None) -> list[ShadowRow]:
        self.migrate()
        where: list[str] = []
        params: list[object] = []
        if tenants:
            where.append("tenant = ANY(%s)")
            params.append(list(tenants))
        if challenger:
            where.append("challenger_version = %s")
            params.append(challenger)
        sql = (
            "SELECT tenant, champion_version, champion_label, champion_score, challenger_version, "
            "challenger_label, challenger_score, windows, champion_seconds_per_window, "
            "challenger_seconds_per_window FROM shadow_scores"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY id"
        )
        with database.connect(self.url) as conn, database.mapped_errors():
            return [ShadowRow(*row) for row in conn.execute(sql, params).fetchall()]
