"""The runbooks cannot rot: one page per alert, the five parts on every page, metric names and
dashboard panels that exist, and every `audioguard` command in them either run against a real
embedded broker holding real dead letters (`<!-- runbook-test: run -->` blocks) or parsed by
the real CLI parser (`<!-- runbook-test: parse -->`, for commands that need a cluster).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path

import pytest

from services.cli import build_parser, main
from services.local.broker import EmbeddedBroker
from services.metrics import exposed_metric_names
from tests.support.dead_letters import Spec, dlq, json_lines, write_dead_letters
from tests.support.pipeline import make_settings, provision

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "runbooks"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "audioguard-dashboard.json"
PAGES = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
PROCEDURES = {
    "replay-after-a-fix.md",
    "model-promotion.md",
    "model-rollback.md",
    "tenant-onboarding.md",
    "tenant-offboarding.md",
}
PARTS = ("## Symptoms", "## Look first", "## Commands", "## Verify", "## Roll back")

_FENCE = re.compile(
    r"(?:<!--\s*runbook-test:\s*(?P<mode>run|parse)\s*-->\s*\n)?```[^\n]*\n(?P<body>.*?)```", re.S
)

#: what the placeholders stand for when a command is only parsed
PARSE_ENV = {
    "TENANT": "acme",
    "REF": "0:17",
    "NAMESPACE": "audioguard",
    "NAME": "audioguard-worker-acme",
    "USER": "oncall",
    "AUDIO_ROOT": "/srv/audio/acme",
}


def _commands(body: str) -> list[str]:
    """Lines of a block, continuation lines joined, comments and blanks dropped."""
    lines: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _blocks(page: Path) -> list[tuple[str | None, list[str]]]:
    return [(m.group("mode"), _commands(m.group("body"))) for m in _FENCE.finditer(page.read_text())]


def _is_audioguard(line: str) -> bool:
    return line.startswith("audioguard ")


def test_one_page_per_alert_and_procedure() -> None:
    urls = re.findall(r"runbook_url:\s*runbooks/([a-z0-9-]+\.md)", RULES.read_text())
    alerts = re.findall(r"-\s*alert:\s*(\w+)", RULES.read_text())
    assert len(urls) == len(alerts) == 11
    names = {p.name for p in PAGES}
    assert set(urls) <= names, set(urls) - names
    assert names == set(urls) | PROCEDURES, names ^ (set(urls) | PROCEDURES)
    index = (RUNBOOKS / "README.md").read_text()
    for page in PAGES:
        text = page.read_text()
        for part in PARTS:
            assert part in text, f"{page.name} lacks {part}"
        assert f"({page.name})" in index, f"README does not link {page.name}"
        assert any(_is_audioguard(line) for _, cmds in _blocks(page) for line in cmds), page.name


def test_every_command_block_is_marked() -> None:
    for page in [*PAGES, RUNBOOKS / "README.md"]:
        for mode, commands in _blocks(page):
            if any(_is_audioguard(line) for line in commands):
                assert mode is not None, f"{page.name}: an `audioguard` block without a runbook-test marker"
            if mode == "run":
                strays = [line for line in commands if not _is_audioguard(line)]
                assert not strays, f"{page.name}: a run block may hold only audioguard commands: {strays}"


def test_metric_names_and_panels_exist() -> None:
    exposed = exposed_metric_names()
    records = set(re.findall(r"record:\s*(\S+)", RULES.read_text()))
    titles = {panel["title"] for panel in _panels(json.loads(DASHBOARD.read_text()))}
    checked_metrics = checked_panels = 0
    for page in [*PAGES, RUNBOOKS / "README.md"]:
        text = page.read_text()
        for name in re.findall(r"`(audioguard_[a-z_]+)", text):
            assert name in exposed or f"{name}_bucket" in exposed, f"{page.name}: unknown metric {name}"
            checked_metrics += 1
        for name in re.findall(r"`([a-z_]+:audioguard_[a-z0-9_]+:[a-z0-9_]+)`", text):
            assert name in records, f"{page.name}: unknown recording rule {name}"
        for title in re.findall(r"panel \*([^*]+)\*", text):
            assert title in titles, f"{page.name}: no dashboard panel {title!r}"
            checked_panels += 1
    assert checked_metrics > 20 and checked_panels > 30


def _panels(node: object) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    if isinstance(node, dict):
        if "title" in node and "type" in node:
            found.append(node)
        for value in node.values():
            found += _panels(value)
    elif isinstance(node, list):
        for value in node:
            found += _panels(value)
    return found


def _argv(line: str, env: dict[str, str]) -> list[str]:
    expanded = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
    return shlex.split(expanded)[1:]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_commands_parse(page: Path) -> None:
    parser = build_parser()
    for _mode, commands in _blocks(page):
        for line in commands:
            if not _is_audioguard(line):
                continue
            try:
                args = parser.parse_args(_argv(line, PARSE_ENV))
            except SystemExit as exit_:  # argparse's way of saying "bad flag"
                pytest.fail(f"{page.name}: `{line}` does not parse (exit {exit_.code})")
            assert callable(args.handler)


SEED = [
    Spec("poison", "missing_object", "rb-missing-1", age=timedelta(minutes=10)),
    Spec("poison", "missing_object", "rb-missing-2", age=timedelta(minutes=30)),
    Spec("poison", "schema", "rb-schema-1", payload=b'{"tenant_id": 7}', age=timedelta(minutes=5)),
    Spec("retryable", "storage_unavailable", "rb-s3-1", attempt=4, age=timedelta(hours=2)),
    Spec("fatal", "auth", "rb-auth-1", age=timedelta(minutes=1)),
    Spec("poison", "crashed_worker", "rb-crash-1", attempt=3, age=timedelta(minutes=20)),
]

RUN_PAGES = [p for p in PAGES if any(mode == "run" for mode, _ in _blocks(p))]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.stem for p in RUN_PAGES])
def test_run_blocks_against_a_real_broker(
    page: Path, broker: EmbeddedBroker, audio_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"rb-{uuid.uuid4().hex[:8]}"
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=2)
    write_dead_letters(settings, tenant, SEED, f"file://{audio_root / tenant}")
    listed = json_lines(
        dlq("list", "--tenant", tenant, "--bootstrap-servers", broker.bootstrap_servers, "--json")[1]
    )
    assert len(listed) == len(SEED)
    audit = tmp_path / "audit.jsonl"
    env = {
        "TENANT": tenant,
        "REF": listed[0]["ref"],
        "NAMESPACE": "audioguard",
        "NAME": f"audioguard-worker-{tenant}",
        "USER": "runbook-test",
        "AUDIO_ROOT": str(audio_root / tenant),
        "AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "AUDIOGUARD_DLQ_AUDIT_LOG": str(audit),
        "AUDIOGUARD_LOG_FORMAT": "text",
    }
    for key in [k for k in os.environ if k.startswith("AUDIOGUARD_")]:
        monkeypatch.delenv(key)  # the developer's own settings must not leak in
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ran = []
    for mode, commands in _blocks(page):
        if mode != "run":
            continue
        for line in commands:
            if not ran:
                # the first command of the page as on-call types it: bash, the console script
                shell_env = dict(os.environ)
                shell_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{shell_env.get('PATH', '')}"
                done = subprocess.run(
                    ["bash", "-c", line], cwd=ROOT, env=shell_env, capture_output=True, text=True, timeout=300
                )
                code, output = done.returncode, done.stdout + done.stderr
            else:
                # the rest in this process (the same parser and handlers; no 5 s torch import each)
                monkeypatch.chdir(ROOT)
                out, err = io.StringIO(), io.StringIO()
                with redirect_stdout(out), redirect_stderr(err):
                    try:
                        code = main(_argv(line, env))
                    except SystemExit as exit_:
                        code = exit_.code if isinstance(exit_.code, int) else 2
                output = out.getvalue() + err.getvalue()
            assert code == 0, f"{page.name}: `{line}` exited {code}\n{output}"
            ran.append(line)
    assert ran
    replays = [line for line in ran if " dlq replay " in line]
    if replays:
        lines = [json.loads(text) for text in audit.read_text().splitlines()]
        assert len(lines) == len(replays)
        assert all(line["event"] == "dlq replay" and line["tenant"] == tenant for line in lines)
    if page.name == "replay-after-a-fix.md":
        # the fix-and-replay page removed exactly what it replayed; the rest stays
        left = json_lines(
            dlq("list", "--tenant", tenant, "--bootstrap-servers", broker.bootstrap_servers, "--json")[1]
        )
        assert not any(item["reason"] == "missing_object" for item in left)
        assert not any(item["category"] == "retries_exhausted" for item in left)
        assert {item["reason"] for item in left} >= {"schema", "auth"}
