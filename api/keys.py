"""API keys: issue, list, revoke and verify, stored hashed (scrypt) in PostgreSQL.

A key reads ``agk_<key_id>_<secret>``: the key id finds the row, the secret is checked against
its scrypt hash in constant time. The secret is shown once, at creation, and never stored or
logged. A key belongs to one tenant and carries scopes; a revoked key is refused from the next
lookup on (the API's verification cache keeps a verified key for `api.key_cache_seconds`).
Rotation with overlap: create the new key, move the client to it, revoke the old one.

This module must never print or log a secret; SQL goes through `services.database` only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from schemas import validate_tenant
from services.database import connect, mapped_errors, migrate, migrations_in

__all__ = ["SCOPES", "ApiKey", "ApiKeys", "IssuedKey", "migrate_api"]

#: what a key may do; a new key gets all of them unless told otherwise
SCOPES = ("detections:write", "detections:read")
_TOKEN = re.compile(r"^agk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
# scrypt cost: ~16 MiB and tens of milliseconds per check, once per key per cache period
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    status: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    #: the whole token the client sends; shown once
    token: str
    #: what signs this key's webhooks (AudioGuard-Signature); shown at creation
    webhook_secret: str


def _hash(secret: str, salt: bytes) -> str:
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def _matches(secret: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(
            secret.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=32,
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def migrate_api(url: str) -> list[str]:
    """Create or update the API's tables (idempotent; safe from every replica at start)."""
    return migrate(url, "api", migrations_in("api.migrations"))


_COLUMNS = "key_id, tenant, name, scopes, status, created_at, revoked_at"


def _row(row: tuple[object, ...]) -> ApiKey:
    key_id, tenant, name, scopes, status, created, revoked = row
    return ApiKey(str(key_id), str(tenant), str(name), tuple(scopes), str(status), created, revoked)  # type: ignore[arg-type]


class ApiKeys:
    """The key table behind one database URL. Every method blocks on PostgreSQL; errors are
    the project's (`RetryableError("database_unavailable")`, `FatalError`)."""

    def __init__(
        self, url: str, *, cache_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # sha256(token) -> (key, verified at): a verified token skips scrypt for a while
        self._verified: dict[str, tuple[ApiKey, float]] = {}

    def create(self, tenant: str, name: str, scopes: tuple[str, ...] = SCOPES) -> IssuedKey:
        validate_tenant(tenant)
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be a non-empty subset of {SCOPES}, got {sorted(scopes)}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        webhook_secret = f"whsec_{secrets.token_urlsafe(32)}"
        with connect(self.url) as conn, mapped_errors():
            row = conn.execute(
                "INSERT INTO api_keys (key_id, tenant, name, scopes, secret_hash, webhook_secret)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (key_id, tenant, name, list(scopes), _hash(secret, secrets.token_bytes(16)), webhook_secret),
            ).fetchone()
        assert row is not None
        return IssuedKey(_row(row), f"agk_{key_id}_{secret}", webhook_secret)

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        with connect(self.url) as conn, mapped_errors():
            if tenant is None:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY tenant, created_at").fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM api_keys WHERE tenant = %s ORDER BY created_at", (tenant,)
                ).fetchall()
        return [_row(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has this id. Idempotent."""
        with connect(self.url) as conn, mapped_errors():
            cur = conn.execute(
                "UPDATE api_keys SET status = 'revoked', revoked_at = now()"
                " WHERE key_id = %s AND status = 'active'",
                (key_id,),
            )
            done = cur.rowcount == 1
        with self._lock:
            self._verified = {k: v for k, v in self._verified.items() if v[0].key_id != key_id}
        return done

    def verify(self, token: str) -> ApiKey | None:
        """The active key this token is, or None (malformed, unknown, wrong secret, revoked)."""
        match = _TOKEN.match(token)
        if not match:
            return None
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._verified.get(fingerprint)
        if cached is not None and now - cached[1] < self._cache_seconds:
            return cached[0]
        key_id, secret = match.groups()
        with connect(self.url) as conn, mapped_errors():
            row = conn.execute(
                f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        if row is None or row[4] != "active" or not _matches(secret, str(row[7])):
            return None
        key = _row(row[:7])
        if self._cache_seconds > 0:
            with self._lock:
                if len(self._verified) > 10_000:
                    self._verified.clear()
                self._verified[fingerprint] = (key, now)
        return key
