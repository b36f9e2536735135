"""The file-backed model registry, promotion / rollback and the `audioguard model` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.cli import main
from services.detector import default_artifact_dir
from services.errors import FatalError
from services.registry import (
    FileRegistry,
    ModelRef,
    open_registry,
    parse_model_uri,
    promote,
    registry_version_of,
    rollback,
)

NAME = "audioguard-lfb-cnn"


@pytest.fixture
def registry(tmp_path: Path) -> FileRegistry:
    return FileRegistry(tmp_path / "registry")


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/m@champion") == ModelRef("m", alias="champion")
    assert parse_model_uri("models:/m/3") == ModelRef("m", version=3)
    assert parse_model_uri("/srv/models/m") is None
    for bad in ("models:/m", "models:/M@champion", "models:/m@latest", "models:/m@v2", "models:m@x"):
        with pytest.raises(FatalError):
            parse_model_uri(bad)
    assert registry_version_of("3.0.0+r12") == 12
    assert registry_version_of("3.0.0") is None


def test_register_versions_carry_what_the_issue_lists(registry: FileRegistry, tmp_path: Path) -> None:
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    first = registry.register(NAME, default_artifact_dir(), card=card, description="shipped")
    second = registry.register(NAME, default_artifact_dir(), eval_results={"eer": 0.2})
    assert (first.version, second.version) == (1, 2)
    manifest = json.loads((default_artifact_dir() / "manifest.json").read_text())
    assert first.sha256 == manifest["checksum"]
    assert first.train_manifest_sha256 == manifest["train_manifest_sha256"]
    assert first.eval_results["eer"] == manifest["dev_metrics"]["eer"]
    assert second.eval_results == {"eer": 0.2}
    assert first.has_card and (Path(first.source) / "model-card.md").read_text() == "# card\n"
    assert not second.has_card
    assert first.serving_version == f"{manifest['version']}+r1"
    assert [v.version for v in registry.versions(NAME)] == [1, 2]
    assert registry.names() == [NAME]


def test_register_refuses_a_tampered_artifact(registry: FileRegistry, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(default_artifact_dir(), bad)
    with (bad / "weights.pt").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(FatalError) as caught:
        registry.register(NAME, bad)
    assert caught.value.reason == "model_checksum"
    assert registry.versions(NAME) == []


def test_fetch_refuses_weights_changed_in_the_registry(registry: FileRegistry) -> None:
    version = registry.register(NAME, default_artifact_dir())
    assert registry.fetch(NAME, 1) == Path(version.source)
    with (Path(version.source) / "weights.pt").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(FatalError) as caught:
        registry.fetch(NAME, 1)
    assert caught.value.reason == "model_checksum"


def test_aliases_promote_rollback_and_the_audit_trail(
    registry: FileRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        registry.register(NAME, default_artifact_dir())
    monkeypatch.setenv("AUDIOGUARD_ACTOR", "alice")
    registry.set_alias(NAME, "champion", 1, reason="first")
    registry.set_alias(NAME, "challenger", 2, reason="candidate")
    assert registry.resolve(ModelRef(NAME, alias="champion")).version == 1
    with pytest.raises(FatalError):
        registry.set_alias(NAME, "champion", 9)
    with pytest.raises(FatalError):
        registry.resolve(ModelRef(NAME, alias="canary"))

    monkeypatch.setenv("AUDIOGUARD_ACTOR", "bob")
    with pytest.raises(FatalError, match="no passing gate"):
        promote(registry, NAME, reason="not gated yet")
    registry.record_eval(NAME, 2, "gate", {"passed": True})
    assert registry.get(NAME, 2).eval_results["gate"] == {"passed": True}
    assert "eer" in registry.get(NAME, 2).eval_results  # the other results stay
    event = promote(registry, NAME, reason="better on piper")
    assert (event.previous, event.version, event.actor, event.action) == (1, 2, "bob", "promote")
    assert registry.aliases(NAME) == {"champion": 2}  # the promoted challenger alias is dropped
    assert registry.get(NAME, 2).aliases == ("champion",)
    with pytest.raises(FatalError):
        promote(registry, NAME, reason="no challenger left")

    back = rollback(registry, NAME, reason="p99 regression")
    assert (back.previous, back.version, back.action) == (2, 1, "rollback")
    assert registry.aliases(NAME)["champion"] == 1
    rollback(registry, NAME, to=3, reason="straight to 3")
    assert registry.aliases(NAME)["champion"] == 3

    history = registry.history(NAME)
    assert [(e.alias, e.action, e.previous, e.version) for e in history] == [
        ("champion", "alias", None, 1),
        ("challenger", "alias", None, 2),
        ("champion", "promote", 1, 2),
        ("challenger", "delete", 2, None),
        ("champion", "rollback", 2, 1),
        ("champion", "rollback", 1, 3),
    ]
    assert [e.actor for e in history] == ["alice", "alice", "bob", "bob", "bob", "bob"]
    assert history[4].reason == "p99 regression"


def test_open_registry_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOGUARD_DATA_DIR", str(tmp_path))
    default = open_registry(None)
    assert isinstance(default, FileRegistry) and default.root == tmp_path / "registry"
    assert isinstance(open_registry(f"file://{tmp_path}/r"), FileRegistry)
    with pytest.raises(FatalError):
        open_registry("ftp://x")


def test_model_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["model", "--registry", str(tmp_path / "r")]
    artifact = str(default_artifact_dir())
    assert main([*where, "register", artifact, "--name", NAME, "--alias", "champion", "--reason", "a"]) == 0
    assert main([*where, "register", artifact, "--name", NAME, "--alias", "challenger", "--reason", "b"]) == 0
    assert main([*where, "list", NAME]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "challenger" in out
    assert main([*where, "promote", NAME, "--reason", "no gate"]) == 1
    assert main([*where, "promote", NAME, "--override", "--reason", "test: no gate run"]) == 0
    assert main([*where, "rollback", NAME, "--reason", "p99"]) == 0
    assert main([*where, "alias", NAME, "canary", "2", "--reason", "try"]) == 0
    capsys.readouterr()
    assert main([*where, "show", f"{NAME}@champion", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["aliases"] == ["champion"]
    assert [e["action"] for e in shown["audit"]] == [
        "alias",
        "alias",
        "promote",
        "delete",
        "rollback",
        "alias",
    ]
    assert main([*where, "show", "nope@champion"]) == 1
    assert "model_not_found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*where, "promote", NAME])  # --reason is required
