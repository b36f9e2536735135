"""services.database on the local PostgreSQL server: migrations apply once, in order, under a
lock, and an edited migration is refused; an unreachable server is retryable, not fatal."""

from __future__ import annotations

import threading

import pytest

from services import database
from services.errors import FatalError, RetryableError

FIRST = database.Migration(1, "0001_first.sql", "CREATE TABLE t (k text PRIMARY KEY);")
SECOND = database.Migration(2, "0002_second.sql", "ALTER TABLE t ADD COLUMN v integer;")


def test_migrations_apply_once_in_order(postgres_url: str) -> None:
    assert database.migrate(postgres_url, "demo", [FIRST, SECOND]) == ["0001_first.sql", "0002_second.sql"]
    assert database.migrate(postgres_url, "demo", [FIRST, SECOND]) == []
    with database.connect(postgres_url) as conn:
        conn.execute("INSERT INTO t (k, v) VALUES ('a', 1)")
    rows = database.applied(postgres_url)
    assert [(r["component"], r["version"]) for r in rows] == [("demo", 1), ("demo", 2)]


def test_concurrent_migrators_serialise(postgres_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(database.migrate(postgres_url, "demo", [FIRST, SECOND]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]


def test_edited_migration_is_refused(postgres_url: str) -> None:
    database.migrate(postgres_url, "demo", [FIRST])
    edited = database.Migration(1, "0001_first.sql", FIRST.sql + " -- changed")
    with pytest.raises(FatalError, match="edited"):
        database.migrate(postgres_url, "demo", [edited])


def test_unreachable_server_is_retryable() -> None:
    with pytest.raises(RetryableError):
        database.connect("postgresql://postgres@127.0.0.1:1/none", connect_timeout=1)
