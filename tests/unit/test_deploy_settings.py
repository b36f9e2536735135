"""Every AUDIOGUARD_* variable that a deployment file sets names a real field of the Settings
model (services/settings.py; nested levels joined with __), so a renamed or mistyped
setting fails here instead of being silently ignored by pydantic-settings in production.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bAUDIOGUARD_[A-Z0-9_]*[A-Z0-9]\b")
#: read by services/settings.py itself (the TOML file), not a field
SPECIAL = {"AUDIOGUARD_CONFIG"}


def deployment_files() -> list[Path]:
    files = [ROOT / "docker-compose.yml", ROOT / "Dockerfile", ROOT / "docs" / "deploy.md"]
    files += sorted((ROOT / "deploy" / "k8s").rglob("*.yaml"))
    files += sorted((ROOT / "terraform").rglob("*.tf"))
    return [f for f in files if f.exists()]


def _model_of(annotation: Any) -> Any:
    """The pydantic model or dict value type inside Optional / dict annotations."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _model_of(arg)
    return annotation


def resolves(variable: str) -> bool:
    """Walk AUDIOGUARD_A__B__C down the Settings tree the way pydantic-settings does."""
    parts = variable.removeprefix("AUDIOGUARD_").lower().split("__")
    model: Any = Settings
    for part in parts:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(part)
            if field is None:
                return False
            model = _model_of(field.annotation)
        elif typing.get_origin(model) is dict:
            # a map level: the key is free (e.g. a tenant), the value type goes on
            model = _model_of(typing.get_args(model)[1])
        else:
            return False  # a scalar field cannot have sub-fields
    return True


def used_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in deployment_files():
        for name in NAME.findall(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_resolver_knows_right_from_wrong() -> None:
    assert resolves("AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS")
    assert resolves("AUDIOGUARD_STORE__URL")
    assert resolves("AUDIOGUARD_TENANT_OVERRIDES__ACME__WEIGHT")
    assert not resolves("AUDIOGUARD_KAFKA__BOOTSTRAP_SERVER")
    assert not resolves("AUDIOGUARD_KAFKA_BOOTSTRAP_SERVERS")
    assert not resolves("AUDIOGUARD_DRAIN_SECONDS__X")


def test_deployment_files_set_variables() -> None:
    names = used_names()
    for where in ("docker-compose.yml", "deploy/k8s/worker.yaml", "Dockerfile"):
        assert any(where in files for files in names.values()), f"{where} sets no AUDIOGUARD_* variable?"


@pytest.mark.parametrize("name", sorted(used_names()))
def test_every_variable_is_a_settings_field(name: str) -> None:
    if name in SPECIAL:
        return
    where = ", ".join(sorted(used_names()[name]))
    assert resolves(name), f"{name} (in {where}) is not a field of services.settings.Settings"
