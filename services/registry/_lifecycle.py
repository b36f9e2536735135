"""Promotion and rollback: the two alias moves the runbooks name, on any backend.

`promote` points `champion` at a version (default: the current challenger) and drops the
challenger alias when it pointed there (a challenger equal to the champion would shadow-score
against itself). `rollback` points `champion` back at the version it pointed at before its
last move, read from the audit trail. `promote` refuses a version without a passing gate
result (`audioguard model gate`) unless `override` is set; the audit record says which. Both
append one audit record each (who, when, from, to, why); neither touches the artifacts.
"""

from __future__ import annotations

from services.errors import FatalError

from ._model import AliasEvent, ModelRegistry

__all__ = ["gate_passed", "promote", "rollback"]


def gate_passed(registry: ModelRegistry, name: str, version: int) -> bool:
    """Whether `version` carries a passing gate result (`eval_results["gate"]["passed"]`)."""
    gate = registry.get(name, version).eval_results.get("gate")
    return isinstance(gate, dict) and gate.get("passed") is True


def promote(
    registry: ModelRegistry,
    name: str,
    version: int | None = None,
    *,
    reason: str,
    override: bool = False,
) -> AliasEvent:
    aliases = registry.aliases(name)
    if version is None:
        if "challenger" not in aliases:
            raise FatalError(
                "model_not_found", f"model {name} has no challenger: name the version to promote"
            )
        version = aliases["challenger"]
    if aliases.get("champion") == version:
        raise FatalError("bad_config", f"{name} version {version} is already the champion")
    passed = gate_passed(registry, name, version)
    if not passed and not override:
        raise FatalError(
            "gate_required",
            f"{name} version {version} has no passing gate result: run `audioguard model gate "
            f"models:/{name}/{version}` first, or promote with --override --reason WHY",
        )
    extra = {"gate": "passed"} if passed else {"gate": "overridden", "override": True}
    event = registry.set_alias(name, "champion", version, action="promote", reason=reason, extra=extra)
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
