"""A settings mistake ends the real CLI with one line and exit code 2, never a traceback (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "services.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def written(name: str, text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_text(text)
        return tmp / name

    return make


def unreadable(tmp: Path) -> Path:
    path = written("secret.toml", "transport = 'kafka'\n")(tmp)
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda tmp: tmp / "missing.toml", "config file {} does not exist"),
        (lambda tmp: tmp, "config file {} is a directory"),
        (written("bad.toml", "transport = [unclosed\n"), "config file {} is not valid TOML"),
        (unreadable, "config file {} cannot be read"),
        (written("value.toml", "fetch_threads = 'many'\n"), "invalid setting fetch_threads"),
    ],
    ids=["missing", "directory", "not-toml", "unreadable", "bad-value"],
)
@pytest.mark.parametrize("command", [["worker"], ["dlq", "stats", "--tenant", "acme"]], ids=["worker", "dlq"])
def test_a_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, make: Callable[[Path], Path], says: str, command: list[str]
) -> None:
    config = make(tmp_path)
    if "cannot be read" in says and os.access(config, os.R_OK):
        pytest.skip("running as a user who can read any file (root)")
    result = run("--config", str(config), *command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audioguard: error: " + says.format(config)), lines


def test_a_missing_file_named_by_the_environment_is_refused_too(tmp_path: Path) -> None:
    result = run("dlq", "stats", "--tenant", "acme", env={"AUDIOGUARD_CONFIG": str(tmp_path / "gone.toml")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"audioguard: error: config file {tmp_path / 'gone.toml'} does not exist"
