"""The registry's values and its one interface, shared by every backend.

A *version* is an immutable artifact directory (weights.pt + manifest.json + model-card.md when
there is one) with its sha256, the hash of the training manifest it was built from, its
evaluation results and who registered it. *Aliases* (`champion`, `challenger`, ...) are movable
pointers to versions; every move is an audit record (who, when, from which version to which,
why). Stages are not modelled: MLflow deprecated them in favour of aliases.

This module must never import a backend SDK or torch.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from services.errors import FatalError

__all__ = [
    "ALIASES",
    "AliasEvent",
    "ModelRef",
    "ModelRegistry",
    "ModelVersion",
    "actor",
    "parse_model_uri",
    "registry_version_of",
    "validate_alias",
    "validate_name",
]

#: the aliases the worker and the runbooks know; others are allowed (e.g. `canary`)
ALIASES = ("champion", "challenger")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise FatalError("bad_config", f"model name {name!r}: expected lowercase [a-z0-9._-], at most 64")
    return name


def validate_alias(alias: str) -> str:
    # MLflow reserves `latest` and aliases that look like version numbers (v1, v2, ...)
    if not _ALIAS_RE.match(alias) or alias == "latest" or re.fullmatch(r"v\d+", alias):
        raise FatalError("bad_config", f"alias {alias!r}: expected [a-z][a-z0-9_-]*, not `latest` or `vN`")
    return alias


@dataclass(frozen=True)
class ModelRef:
    """`models:/<name>@<alias>` or `models:/<name>/<version>`."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_uri(text: str) -> ModelRef | None:
    """A registry reference, or None when `text` is not one (then it is a path, as before).
    Raises FatalError("bad_config") for a `models:` text that is malformed."""
    if not text.startswith("models:"):
        return None
    match = _URI_RE.match(text)
    if not match:
        raise FatalError(
            "bad_config", f"model uri {text!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
        )
    name = validate_name(match["name"])
    if match["alias"]:
        return ModelRef(name, alias=validate_alias(match["alias"]))
    return ModelRef(name, version=int(match["version"]))


def actor() -> str:
    """Who is acting: $AUDIOGUARD_ACTOR (CI, a bot), else the login name."""
    explicit = os.environ.get("AUDIOGUARD_ACTOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"uid-{os.getuid()}"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    sha256: str  # of the weights file; the worker verifies it on load
    manifest_version: str  # the artifact's own version (manifest.json "version")
    train_manifest_sha256: str
    eval_results: dict[str, Any]
    created_at: datetime
    created_by: str
    description: str = ""
    has_card: bool = False
    aliases: tuple[str, ...] = ()
    source: str = ""  # where the backend keeps the artifact

    @property
    def serving_version(self) -> str:
        """What verdicts carry as the model version: the artifact's version plus the registry's
        (two registrations of the same weights stay distinguishable)."""
        return f"{self.manifest_version}+r{self.version}"


def registry_version_of(serving_version: str) -> int | None:
    """The registry version inside a verdict's model version (`3.0.0+r7` -> 7), else None."""
    _, sep, tail = serving_version.rpartition("+r")
    return int(tail) if sep and tail.isdigit() else None


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: the audit record."""

    name: str
    alias: str
    version: int | None  # None: the alias was removed
    previous: int | None
    actor: str
    at: datetime
    action: str  # "alias", "promote", "rollback", "delete"
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "actor": self.actor,
            "at": self.at.isoformat(),
            "action": self.action,
            "reason": self.reason,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AliasEvent:
        return cls(
            name=str(raw["name"]),
            alias=str(raw["alias"]),
            version=None if raw.get("version") is None else int(raw["version"]),
            previous=None if raw.get("previous") is None else int(raw["previous"]),
            actor=str(raw.get("actor", "")),
            at=datetime.fromisoformat(str(raw["at"])),
            action=str(raw.get("action", "alias")),
            reason=str(raw.get("reason", "")),
            extra=dict(raw.get("extra") or {}),
        )


def now() -> datetime:
    return datetime.now(UTC)


class ModelRegistry(Protocol):
    """A model registry. Every method is synchronous and safe to call from several processes
    (the file backend locks, MLflow serialises in its database). Errors: FatalError
    ("model_not_found", "bad_config", "registry_unreachable"), never an SDK's own exception."""

    uri: str

    def register(
        self,
        name: str,
        artifact_dir: Path,
        *,
        eval_results: dict[str, Any] | None = None,
        card: Path | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Copy (upload) a verified artifact directory as the next version of `name`; never
        moves an alias. Raises FatalError("model_checksum") for a tampered artifact."""
        ...

    def names(self) -> list[str]: ...

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, oldest first, with its aliases."""
        ...

    def get(self, name: str, version: int) -> ModelVersion: ...

    def aliases(self, name: str) -> dict[str, int]: ...

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version an alias points at now (or the numbered one)."""
        ...

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        action: str = "alias",
        reason: str = "",
        extra: dict[str, Any] | None = None,
    ) -> AliasEvent:
        """Point `alias` at `version` and append the audit record; returns it."""
        ...

    def delete_alias(self, name: str, alias: str, *, reason: str = "") -> AliasEvent: ...

    def record_eval(self, name: str, version: int, key: str, value: Any) -> ModelVersion:
        """Set `eval_results[key]` of a version (e.g. the gate's result); the artifact is untouched."""
        ...

    def history(self, name: str) -> list[AliasEvent]:
        """The audit records of `name`, oldest first."""
        ...

    def fetch(self, name: str, version: int, into: Path | None = None) -> Path:
        """A local directory holding the version's artifact, checksum verified against the
        registered sha256 (FatalError("model_checksum") otherwise). Cached: a second call for the
        same version does not download again."""
        ...
