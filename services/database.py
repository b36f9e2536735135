"""PostgreSQL: connections and versioned schema migrations, for every room that keeps SQL data.

The reporting pipeline, the API layer's keys and metering, and anything else with tables in
PostgreSQL share one database URL (`database.url`, env `AUDIOGUARD_DATABASE__URL`,
``postgresql://user@host:5432/dbname``) and one migration mechanism: plain SQL files named
``NNNN_what.sql`` in a package directory, applied in order, each in its own transaction, and
recorded in ``schema_migrations (component, version, name, sha256, applied_at)``. A file that
was applied and then edited is refused (its sha256 no longer matches): write a new one instead.
Two processes migrating at once serialise on an advisory lock, so a fleet of replicas may all
run ``migrate`` on start.

Errors are mapped here, once, into `services.errors`: the server down or restarting ->
``RetryableError("database_unavailable")``; a bad URL, rejected credentials or an edited
migration -> ``FatalError``. This is the only module that imports psycopg.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from services.errors import FatalError, RetryableError

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# pg_advisory_xact_lock key shared by every migrating process: "audioguard" folded to 63 bits
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"audioguard.migrations").digest()[:8], "big") >> 1

Connection = psycopg.Connection


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def _map_error(exc: Exception) -> Exception:
    if isinstance(exc, pg_errors.InvalidPassword | pg_errors.InvalidAuthorizationSpecification):
        return FatalError("auth", str(exc))
    if isinstance(exc, pg_errors.InvalidCatalogName):
        return FatalError("bad_config", f"database does not exist: {exc}")
    if isinstance(exc, psycopg.OperationalError | pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        return RetryableError("database_unavailable", str(exc))
    if isinstance(exc, psycopg.ProgrammingError | ValueError):
        return FatalError("bad_config", str(exc))
    return exc


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise psycopg's errors as the project's tree (for callers that run their own SQL)."""
    try:
        yield
    except (psycopg.Error, ValueError) as exc:
        mapped = _map_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def connect(url: str, *, autocommit: bool = False, connect_timeout: float = 5.0) -> Connection:
    """A new connection; errors mapped. The caller owns it (use it as a context manager)."""
    with mapped_errors():
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(connect_timeout)))


def migrations_in(package: str) -> list[Migration]:
    """The ``NNNN_*.sql`` files of a package directory (e.g. ``reporting.migrations``), in order."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise FatalError("bad_config", f"{package}: two migrations share a version number")
    return found


def migrate(url: str, component: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations of `component` not yet applied; return the names applied now."""
    applied_now: list[str] = []
    with connect(url) as conn, mapped_errors(), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component text NOT NULL, version integer NOT NULL, name text NOT NULL,"
            " sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        )
        done = {
            row[0]: (row[1], row[2])
            for row in conn.execute(
                "SELECT version, name, sha256 FROM schema_migrations WHERE component = %s", (component,)
            )
        }
        for migration in migrations:
            if migration.version in done:
                name, sha = done[migration.version]
                if sha != migration.sha256:
                    raise FatalError(
                        "bad_config",
                        f"migration {component}/{name} was applied and then edited; add a new one",
                    )
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, sha256)"
                    " VALUES (%s, %s, %s, %s)",
                    (component, migration.version, migration.name, migration.sha256),
                )
            applied_now.append(migration.name)
    return applied_now


def applied(url: str) -> list[dict[str, Any]]:
    """Every applied migration, for `audioguard db status`-style listings."""
    with connect(url) as conn, mapped_errors():
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if not exists or exists[0] is None:
            return []
        cur = conn.execute(
            "SELECT component, version, name, applied_at FROM schema_migrations ORDER BY component, version"
        )
        return [dict(zip(("component", "version", "name", "applied_at"), row, strict=True)) for row in cur]
