"""Promotion and rollback: the two alias moves the runbooks name, on any backend.

`promote` points `champion` at a version (default: the current challenger) and drops the
challenger alias when it pointed there (a challenger equal to the champion would shadow-score
against itself). `rollback` points `champion` back at the version it pointed at before its
last move, read from the audit trail. Both append one audit record each (who, when, from, to,
why); neither touches the artifacts.
"""

from __future__ import annotations

from services.errors import FatalError

from ._model import AliasEvent, ModelRegistry

__all__ = ["promote", "rollback"]


def promote(registry: ModelRegistry, name: str, version: int | None = None, *, reason: str) -> AliasEvent:
    aliases = registry.aliases(name)
    if version is None:
        if "challenger" not in aliases:
            raise FatalError(
                "model_not_found", f"model {name} has no challenger: name the version to promote"
            )
        version = aliases["challenger"]
    if aliases.get("champion") == version:
        raise FatalError("bad_config", f"{name} version {version} is already the champion")
    event = registry.set_alias(name, "champion", version, action="promote", reason=reason)
    if aliases.get("challenger") == version:
        registry.delete_alias(name, "challenger", reason=f"promoted to champion: {reason}")
    return event


def rollback(registry: ModelRegistry, name: str, to: int | None = None, *, reason: str) -> AliasEvent:
    current = registry.aliases(name).get("champion")
    if current is None:
        raise FatalError("model_not_found", f"model {name} has no champion to roll back")
    if to is None:
        moves = [e for e in registry.history(name) if e.alias == "champion" and e.version == current]
        previous = next((e.previous for e in reversed(moves) if e.previous not in (None, current)), None)
        if previous is None:
            raise FatalError(
                "model_not_found",
                f"the audit trail of {name} has no champion before version {current}; name one with --to",
            )
        to = previous
    if to == current:
        raise FatalError("bad_config", f"{name} version {to} is already the champion")
    return registry.set_alias(name, "champion", to, action="rollback", reason=reason, extra={"from": current})
