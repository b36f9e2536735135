"""The verdict / idempotency store: one interface, three backends (memory, SQLite, Redis).

What it is for: a re-delivered arrival must yield the *same* verdict instead of being
scored twice. The pipeline looks the idempotency key up with `get` before scoring and
records the verdict with `put_if_absent` after scoring; whoever stores first wins, and
every later writer (a racing worker, a re-delivery after a crash) gets the first value
back. Keys are namespaced by tenant, so two tenants using the same idempotency key can
never see each other's verdicts. Entries expire after `ttl_seconds`.

A second, tiny key-value side keeps transport checkpoints (Kinesis shard -> sequence
number) in the same backend, without expiry.

A third side counts attempts *in progress* per (tenant, idempotency key), with the same TTL:
the crash-loop quarantine (`consumers.quarantine`) records an attempt before the risky work
(fetch, decode, score) and forgets it once the message is done, so a counter that survives
is an attempt that died with its worker. Only a durable store (SQLite, Redis) remembers a
crash; the memory store forgets it with the process.

    memory://                     this process only; gone when it exits (tests, demos)
    sqlite:///relative/file.db    one host, any number of processes (WAL); the embedded default
    sqlite:////absolute/file.db   (SQLAlchemy's convention: the path follows the third slash)
    redis://host:port/db          many hosts; `rediss://` for TLS

Errors are mapped here, once, into `services.errors`: a store that cannot be reached or
is busy -> ``RetryableError("store_unavailable")``; a bad URL or unusable path ->
``FatalError("bad_config")``; rejected credentials -> ``FatalError("auth")``; a Redis
reply that no retry can fix (wrong type, out of memory) or a corrupt SQLite file ->
``FatalError("store_error")``.

This module must never retry on its own (`services.retry.retry_call` owns the policy; the
Redis client's built-in retries are switched off for that reason), and it is the only
module that imports redis.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from schemas import TENANT_PATTERN
from services.errors import FatalError, RetryableError

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "VerdictStore",
    "open_store",
    "redis_key",
]

DEFAULT_TTL_SECONDS = 7 * 24 * 3600
_TENANT_RE = re.compile(TENANT_PATTERN)
# The contract caps idempotency keys at 200 characters; leave room for keys built elsewhere.
_MAX_KEY_CHARS = 1024

Clock = Callable[[], float]


def _check_tenant_key(tenant: str, key: str) -> None:
    # A tenant id cannot contain ":" (TENANT_PATTERN), which is what makes
    # "<tenant>:<key>" an unambiguous namespace even when the key itself contains ":".
    if not _TENANT_RE.match(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}: must match {TENANT_PATTERN}")
    if not key or len(key) > _MAX_KEY_CHARS:
        raise ValueError(f"idempotency key must be 1..{_MAX_KEY_CHARS} characters, got {len(key)}")


class VerdictStore(ABC):
    """Verdicts by (tenant, idempotency key), with a TTL; plus transport checkpoints.

    Every method blocks for at most the backend's timeout and is safe to call from several
    threads. Transient trouble raises `RetryableError("store_unavailable")` and leaves the
    store unchanged (a failed `put_if_absent` may be called again: it is idempotent).
    """

    ttl_seconds: int

    @abstractmethod
    def get(self, tenant: str, key: str) -> bytes | None:
        """The stored verdict, or None when there is none or it has expired."""

    @abstractmethod
    def put_if_absent(self, tenant: str, key: str, verdict: bytes) -> bytes:
        """Store `verdict` unless one is already stored (SET NX with TTL on Redis); return the stored
        value (ours or the earlier one). This is what makes a re-delivered arrival yield the same verdict."""

    @abstractmethod
    def get_checkpoint(self, name: str) -> str | None:
        """The last value written by `set_checkpoint(name, ...)`, or None. Checkpoints never expire."""

    @abstractmethod
    def set_checkpoint(self, name: str, value: str) -> None:
        """Overwrite the checkpoint `name`; durable when this returns."""

    @abstractmethod
    def claim_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        """For each (tenant, key): how many attempts are counted in progress already; where none
        is, count this one now (the counter starts at 1 with the TTL; SET NX EX on Redis). One
        round trip for all, atomic per key, durable when this returns."""

    @abstractmethod
    def begin_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        """Count one more attempt in progress for each (tenant, key) and restart its TTL (INCR +
        EXPIRE on Redis), atomically, durable when this returns; returns the new counts."""

    @abstractmethod
    def undo_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        """Take back one counted attempt of each (an attempt that ended without crashing and
        without an outcome: a graceful stop, a revoke). A counter never goes below zero."""

    @abstractmethod
    def clear_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        """Forget the attempt counters of these (tenant, key) pairs (their messages are done),
        in one round trip. Clearing a pair without a counter is fine."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent; the store is unusable afterwards."""

    def check(self) -> None:  # noqa: B027 - optional hook, a no-op for embedded stores
        """Raise `RetryableError` / `FatalError` if the store cannot be used now (readiness probes)."""

    def __enter__(self) -> VerdictStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class MemoryStore(VerdictStore):
    """A dict behind a lock: this process only, lost on exit. For tests and the demo."""

    def __init__(self, ttl_seconds: int = DEFAULT_TTL_SECONDS, *, clock: Clock = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._verdicts: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._checkpoints: dict[str, str] = {}
        self._attempts: dict[tuple[str, str], tuple[int, float]] = {}

    def get(self, tenant: str, key: str) -> bytes | None:
        _check_tenant_key(tenant, key)
        with self._lock:
            entry = self._verdicts.get((tenant, key))
            if entry is None or entry[1] <= self._clock():
                return None
            return entry[0]

    def put_if_absent(self, tenant: str, key: str, verdict: bytes) -> bytes:
        _check_tenant_key(tenant, key)
        with self._lock:
            now = self._clock()
            entry = self._verdicts.get((tenant, key))
            if entry is not None and entry[1] > now:
                return entry[0]
            self._verdicts[(tenant, key)] = (verdict, now + self.ttl_seconds)
            if len(self._verdicts) % 1024 == 0:
                self._prune(now)
            return verdict

    def _prune(self, now: float) -> None:
        for item, (_, expires_at) in list(self._verdicts.items()):
            if expires_at <= now:
                del self._verdicts[item]

    def get_checkpoint(self, name: str) -> str | None:
        with self._lock:
            return self._checkpoints.get(name)

    def set_checkpoint(self, name: str, value: str) -> None:
        with self._lock:
            self._checkpoints[name] = value

    def _live_attempts(self, item: tuple[str, str], now: float) -> int:
        count, expires_at = self._attempts.get(item, (0, now))
        return count if expires_at > now else 0

    def _update_attempts(
        self, items: Sequence[tuple[str, str]], step: Callable[[int], tuple[int, int]]
    ) -> list[int]:
        """For each item, `step(live count)` -> (count to store, 0 = leave as is; count to report)."""
        for tenant, key in items:
            _check_tenant_key(tenant, key)
        with self._lock:
            now = self._clock()
            counts = []
            for item in items:
                stored, reported = step(self._live_attempts(item, now))
                if stored > 0:
                    self._attempts[item] = (stored, now + self.ttl_seconds)
                counts.append(reported)
            self._prune_attempts(now)
            return counts

    def claim_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        # counts a first attempt; reports the earlier ones of an item that has some
        return self._update_attempts(items, lambda count: (1 if count <= 0 else 0, max(0, count)))

    def begin_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        return self._update_attempts(items, lambda count: (count + 1, count + 1))

    def undo_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            now = self._clock()
            for item in items:
                count = self._live_attempts(item, now)
                if count <= 1:
                    self._attempts.pop(item, None)
                else:
                    self._attempts[item] = (count - 1, self._attempts[item][1])

    def _prune_attempts(self, now: float) -> None:
        if len(self._attempts) % 1024 == 0:
            for item, (_, until) in list(self._attempts.items()):
                if until <= now:
                    del self._attempts[item]

    def clear_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            for tenant, key in items:
                self._attempts.pop((tenant, key), None)

    def close(self) -> None:
        pass


class SqliteStore(VerdictStore):
    """An SQLite file: safe for several processes on one host.

    WAL lets readers run beside the one writer; `put_if_absent` runs as one
    ``BEGIN IMMEDIATE`` transaction (drop an expired row, ``INSERT OR IGNORE``, read back),
    so of two processes racing on one key exactly one inserts and both read the same value.
    Expired rows are invisible to reads at once and pruned in small batches as writes go by.
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS verdicts ("
        " tenant TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires_at REAL NOT NULL,"
        " PRIMARY KEY (tenant, key))",
        "CREATE INDEX IF NOT EXISTS verdicts_expires_at ON verdicts (expires_at)",
        "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS attempts ("
        " tenant TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL, expires_at REAL NOT NULL,"
        " PRIMARY KEY (tenant, key))",
    )
    #: rows deleted per prune, so one prune never holds the write lock for long
    PRUNE_BATCH = 1000

    def __init__(
        self,
        path: str | Path,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        *,
        busy_timeout_seconds: float = 5.0,
        prune_interval_seconds: float = 60.0,
        clock: Clock = time.time,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.path = Path(path)
        self._clock = clock
        self._prune_interval = prune_interval_seconds
        self._lock = threading.Lock()
        if not self.path.parent.is_dir():
            raise FatalError("bad_config", f"SQLite store directory {self.path.parent} does not exist")
        try:
            # isolation_level=None: no implicit transactions; we open the ones we need explicitly.
            # check_same_thread=False: one connection shared by the worker's threads, behind _lock.
            self._db = sqlite3.connect(
                str(self.path), timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise FatalError("bad_config", f"cannot open SQLite store {self.path}: {error}") from error
        with self._errors():
            self._db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL survives a process crash and loses at most the last commits on a power
            # cut; a lost entry only costs one re-scoring, not a wrong verdict, so skip the fsync per put.
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in self._SCHEMA:
                self._db.execute(statement)
        self._last_prune = float("-inf")
        self._last_attempts_prune = float("-inf")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as error:
            # "database is locked" past the busy timeout, disk I/O trouble: may pass.
            raise RetryableError("store_unavailable", f"SQLite store {self.path}: {error}") from error
        except sqlite3.DatabaseError as error:
            raise FatalError("store_error", f"SQLite store {self.path}: {error}") from error

    def get(self, tenant: str, key: str) -> bytes | None:
        _check_tenant_key(tenant, key)
        with self._lock, self._errors():
            row = self._db.execute(
                "SELECT value FROM verdicts WHERE tenant = ? AND key = ? AND expires_at > ?",
                (tenant, key, self._clock()),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def put_if_absent(self, tenant: str, key: str, verdict: bytes) -> bytes:
        _check_tenant_key(tenant, key)
        with self._lock, self._errors():
            now = self._clock()
            # IMMEDIATE takes the write lock up front, so the read-back below sees what won.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "DELETE FROM verdicts WHERE tenant = ? AND key = ? AND expires_at <= ?",
                    (tenant, key, now),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO verdicts (tenant, key, value, expires_at) VALUES (?, ?, ?, ?)",
                    (tenant, key, verdict, now + self.ttl_seconds),
                )
                row = self._db.execute(
                    "SELECT value FROM verdicts WHERE tenant = ? AND key = ?", (tenant, key)
                ).fetchone()
                if now - self._last_prune >= self._prune_interval:
                    self._prune(now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return bytes(row[0])

    def _prune(self, now: float) -> None:
        self._db.execute(
            "DELETE FROM verdicts WHERE rowid IN (SELECT rowid FROM verdicts WHERE expires_at <= ? LIMIT ?)",
            (now, self.PRUNE_BATCH),
        )
        self._last_prune = now

    def prune(self) -> int:
        """Delete expired rows now (all of them); returns how many went."""
        with self._lock, self._errors():
            cursor = self._db.execute("DELETE FROM verdicts WHERE expires_at <= ?", (self._clock(),))
            return cursor.rowcount

    def get_checkpoint(self, name: str) -> str | None:
        with self._lock, self._errors():
            row = self._db.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_checkpoint(self, name: str, value: str) -> None:
        with self._lock, self._errors():
            self._db.execute(
                "INSERT INTO checkpoints (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    @contextmanager
    def _write(self) -> Iterator[float]:
        """One write transaction (a round trip's worth of statements) under the lock; yields now."""
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._clock()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def claim_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        for tenant, key in items:
            _check_tenant_key(tenant, key)
        counts = []
        with self._write() as now:
            for tenant, key in items:
                self._db.execute(
                    "DELETE FROM attempts WHERE tenant = ? AND key = ? AND (expires_at <= ? OR count <= 0)",
                    (tenant, key, now),
                )
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO attempts (tenant, key, count, expires_at) VALUES (?, ?, 1, ?)",
                    (tenant, key, now + self.ttl_seconds),
                ).rowcount
                if inserted:
                    counts.append(0)
                    continue
                row = self._db.execute(
                    "SELECT count FROM attempts WHERE tenant = ? AND key = ?", (tenant, key)
                ).fetchone()
                counts.append(int(row[0]))
            self._prune_attempts(now)
        return counts

    def begin_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        for tenant, key in items:
            _check_tenant_key(tenant, key)
        counts = []
        with self._write() as now:
            for tenant, key in items:
                # an expired counter starts again at 1
                row = self._db.execute(
                    "INSERT INTO attempts (tenant, key, count, expires_at) VALUES (?, ?, 1, ?)"
                    " ON CONFLICT (tenant, key) DO UPDATE SET"
                    " count = CASE WHEN attempts.expires_at <= ? THEN 1 ELSE attempts.count + 1 END,"
                    " expires_at = excluded.expires_at"
                    " RETURNING count",
                    (tenant, key, now + self.ttl_seconds, now),
                ).fetchone()
                counts.append(int(row[0]))
            self._prune_attempts(now)
        return counts

    def _prune_attempts(self, now: float) -> None:
        if now - self._last_attempts_prune >= self._prune_interval:
            self._db.execute(
                "DELETE FROM attempts WHERE rowid IN"
                " (SELECT rowid FROM attempts WHERE expires_at <= ? LIMIT ?)",
                (now, self.PRUNE_BATCH),
            )
            self._last_attempts_prune = now

    def undo_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        with self._write():
            self._db.executemany(
                "UPDATE attempts SET count = count - 1 WHERE tenant = ? AND key = ?", list(items)
            )
            self._db.executemany(
                "DELETE FROM attempts WHERE tenant = ? AND key = ? AND count <= 0", list(items)
            )

    def clear_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        if items:
            with self._write():
                self._db.executemany("DELETE FROM attempts WHERE tenant = ? AND key = ?", list(items))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def redis_key(prefix: str, tenant: str, key: str, kind: str = "verdict") -> str:
    """`<prefix>:<kind>:<tenant>:<key>` (kind ``verdict`` or ``attempts``); the prefix is
    ``audioguard`` unless configured."""
    return f"{prefix}:{kind}:{tenant}:{key}"


class RedisStore(VerdictStore):
    """Redis (or Valkey, ElastiCache, Memorystore): one store shared by workers on many hosts.

    `put_if_absent` is ``SET key value NX EX ttl``: Redis decides the winner atomically; a
    loser reads the winner's value back. Checkpoints live under ``<prefix>:checkpoint:<name>``,
    attempt counters under ``<prefix>:attempts:<tenant>:<key>`` (INCR + EXPIRE in one MULTI).
    """

    def __init__(
        self,
        url: str,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        *,
        key_prefix: str = "audioguard",
        socket_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 2.0,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis
        self.ttl_seconds = ttl_seconds
        self.key_prefix = key_prefix
        parts = urlsplit(url)
        if parts.path not in ("", "/") and not re.fullmatch(r"/\d+", parts.path):
            raise FatalError(
                "bad_config", f"Redis store URL must end in /<db number>, got path {parts.path!r}"
            )
        try:
            self._client: Any = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_seconds,
                socket_connect_timeout=connect_timeout_seconds,
                # No hidden retries: the caller's retry policy (services.retry) is the only one.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
            )
        except ValueError as error:
            raise FatalError("bad_config", f"bad Redis store URL: {error}") from error
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        exc = self._redis.exceptions
        try:
            yield
        except (exc.AuthenticationError, exc.AuthorizationError, exc.NoPermissionError) as error:
            raise FatalError("auth", f"Redis store {self._where} refused us: {error}") from error
        except (exc.ConnectionError, exc.TimeoutError, exc.ReadOnlyError, exc.TryAgainError) as error:
            # ReadOnlyError: we reached a replica during a failover; the primary comes back.
            raise RetryableError("store_unavailable", f"Redis store {self._where}: {error}") from error
        except exc.RedisError as error:
            raise FatalError("store_error", f"Redis store {self._where}: {error}") from error

    def _key(self, tenant: str, key: str) -> str:
        _check_tenant_key(tenant, key)
        return redis_key(self.key_prefix, tenant, key)

    def get(self, tenant: str, key: str) -> bytes | None:
        name = self._key(tenant, key)
        with self._errors():
            value = self._client.get(name)
        return None if value is None else bytes(value)

    def put_if_absent(self, tenant: str, key: str, verdict: bytes) -> bytes:
        name = self._key(tenant, key)
        with self._errors():
            # Two round trips only for a duplicate. The loop covers the earlier value expiring
            # between our SET NX and our GET; it then comes round and stores ours.
            for _ in range(3):
                if self._client.set(name, verdict, nx=True, ex=self.ttl_seconds):
                    return verdict
                existing = self._client.get(name)
                if existing is not None:
                    return bytes(existing)
        raise RetryableError("store_unavailable", f"Redis store {self._where}: key {name} kept expiring")

    def get_checkpoint(self, name: str) -> str | None:
        with self._errors():
            value = self._client.get(f"{self.key_prefix}:checkpoint:{name}")
        return None if value is None else bytes(value).decode("utf-8")

    def set_checkpoint(self, name: str, value: str) -> None:
        with self._errors():
            self._client.set(f"{self.key_prefix}:checkpoint:{name}", value.encode("utf-8"))

    def _attempts_key(self, tenant: str, key: str) -> str:
        _check_tenant_key(tenant, key)
        return redis_key(self.key_prefix, tenant, key, kind="attempts")

    def claim_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        names = [self._attempts_key(tenant, key) for tenant, key in items]
        if not names:
            return []
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            for name in names:
                pipe.set(name, 1, nx=True, ex=self.ttl_seconds)
                pipe.get(name)
            replies = pipe.execute()
        # SET NX succeeded: nothing was counted, this attempt is now; else the GET says how many
        pairs = zip(replies[::2], replies[1::2], strict=True)
        return [0 if created else max(0, int(value)) for created, value in pairs]

    def begin_attempts(self, items: Sequence[tuple[str, str]]) -> list[int]:
        names = [self._attempts_key(tenant, key) for tenant, key in items]
        if not names:
            return []
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            for name in names:
                pipe.incr(name)
                pipe.expire(name, self.ttl_seconds)
            replies = pipe.execute()
        return [int(count) for count in replies[::2]]

    def undo_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        names = [self._attempts_key(tenant, key) for tenant, key in items]
        if not names:
            return
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            for name in names:
                pipe.decr(name)
            counts = pipe.execute()
            # DECR keeps the TTL, but of a missing key it makes -1 without one: drop what hit 0
            gone = [name for name, count in zip(names, counts, strict=True) if int(count) <= 0]
            if gone:
                self._client.delete(*gone)

    def clear_attempts(self, items: Sequence[tuple[str, str]]) -> None:
        names = [self._attempts_key(tenant, key) for tenant, key in items]
        if names:
            with self._errors():
                self._client.delete(*names)

    def check(self) -> None:
        with self._errors():
            self._client.ping()

    def close(self) -> None:
        self._client.close()


def open_store(url: str, ttl_seconds: int = DEFAULT_TTL_SECONDS, **options: Any) -> VerdictStore:
    """The store named by `url` (see the module docstring); `options` go to the backend's
    constructor (e.g. ``key_prefix`` for Redis, ``clock`` for tests). Raises
    ``FatalError("bad_config")`` for an unknown scheme, a bad path or a bad TTL. Does not
    connect to Redis yet: call `check()` to find out whether it is reachable."""
    if ttl_seconds < 1:
        raise FatalError("bad_config", f"store ttl_seconds must be at least 1, got {ttl_seconds}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        if url.split("://", 1)[1] not in ("", "/"):
            raise FatalError("bad_config", f"memory store URL takes no path: {url!r}")
        return MemoryStore(ttl_seconds, **options)
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.lower().startswith("sqlite:///") else ""
        if not path or path.endswith("/"):
            raise FatalError("bad_config", f"SQLite store URL must be sqlite:///path/to/file.db, got {url!r}")
        return SqliteStore(path, ttl_seconds, **options)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, ttl_seconds, **options)
    raise FatalError(
        "bad_config", f"unknown store URL {url!r}: use memory://, sqlite:///path or redis://host:port/db"
    )
