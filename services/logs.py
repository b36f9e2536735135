"""Structured logs: one JSON object per line, with the upload's context, and no secrets.

    {"time": "2026-11-22T06:50:01.123Z", "level": "INFO", "logger": "consumers.runner",
     "message": "verdict published", "tenant": "acme", "idempotency_key": "k-1", ...}

Context fields (tenant, idempotency_key, event_id, content_id, worker_id, ...) come from
`extra={...}` on the call or from the `log_context(**fields)` context manager, which
binds them for everything logged inside it on the same thread or asyncio task
(contextvars), so a pipeline step does not have to pass them along by hand.

`configure_logging(level, fmt)` installs one stderr handler on the root logger with a
`RedactionFilter`: SecretStr values, values under keys that look secret (password,
secret, token, sasl_password, sasl.password, api_key, credentials ...) and `key=value`
pairs of such keys inside message text are replaced by "[REDACTED]" before any
formatter sees them.

This module must never let a secret reach a handler and must never raise out of a
logging call because a field could not be encoded.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal, TextIO

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = [
    "CONTEXT_FIELDS",
    "REDACTED",
    "JsonFormatter",
    "RedactionFilter",
    "TextFormatter",
    "configure_logging",
    "current_context",
    "log_context",
    "redact",
    "register_secrets",
]

REDACTED: Final = "[REDACTED]"

#: fields shown first, in this order, when present
CONTEXT_FIELDS: Final = ("tenant", "idempotency_key", "event_id", "content_id", "worker_id")

# `sasl.password`, `SASL_PASSWORD`, `aws_secret_access_key`, `x-api-key`, `authorization` ...
_SECRET_KEY_RE: Final = re.compile(
    r"(pass(?:word|wd|phrase)|pwd|secret|token|api[_.-]?key|credential|private[_.-]?key|authorization|sasl[_.-]password)",
    re.IGNORECASE,
)
# key=value / key: value / "key": "value" inside free text, for the same secret-looking keys
_SECRET_IN_TEXT_RE: Final = re.compile(
    r"""(?P<key>["']?[\w.-]*(?:pass(?:word|wd|phrase)|pwd|secret|token|api[_.-]?key|credential|authorization)[\w.-]*["']?"""
    # already masked values (pydantic's SecretStr('**********'), ours) are left as they are
    r"""\s*[:=]\s*)(?P<quote>["']?)(?!Secret(?:Str|Bytes)\(|\[REDACTED\]|\*{3})(?P<value>[^\s"',;&})]+)""",
    re.IGNORECASE,
)

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "audioguard_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)

_HANDLER_MARK: Final = "_audioguard_handler"

# Literal secret values taken from the settings tree (`register_secrets`): scrubbed from
# every string even when a caller unwrapped one and passed it under an innocent name.
_known_secrets: frozenset[str] = frozenset()
#: shorter values would scrub ordinary words out of log lines
_MIN_SECRET_LENGTH: Final = 4


def _collect_secrets(value: Any, found: set[str], depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif isinstance(value, SecretBytes):
        found.add(value.get_secret_value().decode("utf-8", "replace"))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name, None), found, depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if _is_secret_key(key) and isinstance(item, str):
                found.add(item)
            else:
                _collect_secrets(item, found, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _collect_secrets(item, found, depth + 1)


def register_secrets(*sources: Any) -> int:
    """Remember every SecretStr (and secret-keyed string) in `sources` (settings models,
    dicts) so its literal value is scrubbed from all log output. Returns how many are known."""
    global _known_secrets
    found: set[str] = set()
    for source in sources:
        _collect_secrets(source, found)
    _known_secrets = _known_secrets | {s for s in found if len(s) >= _MIN_SECRET_LENGTH}
    return len(_known_secrets)


def _scrub_known(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind `fields` to every record logged inside the block (nested blocks add to it)."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY_RE.search(key))


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` with secrets replaced: SecretStr/SecretBytes, secret-looking keys of
    mappings (recursively), and `password=...`-style pairs inside strings."""
    if _depth > 8:
        return value
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, str):
        return _scrub_known(_SECRET_IN_TEXT_RE.sub(lambda m: f"{m['key']}{m['quote']}{REDACTED}", value))
    if isinstance(value, Mapping):
        return {
            k: REDACTED if _is_secret_key(k) and v is not None else redact(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, tuple):
        return tuple(redact(v, _depth + 1) for v in value)
    if isinstance(value, list | set | frozenset):
        return [redact(v, _depth + 1) for v in value]
    return value


class RedactionFilter(logging.Filter):
    """Scrubs a record in place before it reaches a formatter: message, args, extras, context.

    Attached to the handler (not a logger) so it sees records from every library logger too.
    The message is rendered once here, with the args, so a secret passed as an argument to
    a harmless format string is caught as well.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = redact(record.msg) if isinstance(record.msg, Mapping) else record.msg
        try:
            # render with redacted args, then scrub the text as a whole
            args = redact(record.args) if record.args else None
            message = str(msg) % args if args else str(msg)
        except Exception:
            message = f"{msg!s} {redact(record.args)!r}"
        record.msg = redact(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key in _RECORD_ATTRS:
                continue
            setattr(record, key, REDACTED if _is_secret_key(key) and value is not None else redact(value))
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context fields for the record: the bound context, then the record's extras (which win)."""
    merged: dict[str, Any] = dict(redact(dict(_context.get())))
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            merged[key] = value
    ordered: dict[str, Any] = {key: merged.pop(key) for key in CONTEXT_FIELDS if key in merged}
    ordered.update(merged)
    return ordered


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            payload["stack"] = redact(self.formatStack(record.stack_info))
        # default=str: a field we cannot encode is shown as its str(), never an exception
        return _scrub_known(json.dumps(payload, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Human-readable: `time LEVEL logger message key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{_iso(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if context:
            line = f"{line}  {context}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return _scrub_known(str(redact(line)))


def configure_logging(
    level: str | int = "INFO",
    fmt: Literal["json", "text"] = "json",
    stream: TextIO | None = None,
    *,
    secrets_from: Any = None,
) -> logging.Handler:
    """Install the audioguard handler on the root logger (replacing one installed before).

    Idempotent: calling it again swaps the handler instead of adding a second one, so
    tests and sub-commands can reconfigure freely. Pass the settings as `secrets_from` so
    their secret values are scrubbed wherever they appear. Returns the installed handler.
    """
    if secrets_from is not None:
        register_secrets(secrets_from)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
            existing.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
