"""The Prometheus rules and config are valid, and every alert fires and stays quiet as designed.

Runs the real `promtool` (Debian's `prometheus` package; `make test` installs it through the
Makefile's APT_PACKAGES). The unit tests in rules_test.yml drive synthetic series through
every alert; the last test proves those unit tests would catch a broken threshold.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (make system-deps installs Debian's prometheus)"
)


def _promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def test_check_rules_accepts_every_rule() -> None:
    result = _promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_scrape_config_is_valid() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    # WorkerDown selects up{job="audioguard"}: the example must scrape under that job name.
    assert [job["job_name"] for job in config["scrape_configs"]] == ["audioguard"]


def test_every_alert_has_its_runbook_and_is_tested_firing_and_quiet() -> None:
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    assert {
        "DeadLettersGrowing",
        "PoisonStorm",
        "CircuitBreakerOpen",
        "ConsumerLagRising",
        "EndToEndLatencyHigh",
        "WorkerDown",
        "WorkerNotReady",
        "GpuMemoryHigh",
        "ScoreDriftHigh",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["annotations"]["runbook_url"] == f"runbooks/{_kebab(name)}.md", name
        assert rule["labels"]["severity"] in ("warning", "critical"), name

    tests = yaml.safe_load((PROM_DIR / "rules_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(alerts), f"alerts never tested firing: {set(alerts) - firing}"
    assert quiet == set(alerts), f"alerts never tested quiet: {set(alerts) - quiet}"


def test_rule_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    rule = "tenant:audioguard_end_to_end_seconds:p99_5m"
    broken = (PROM_DIR / "rules.yml").read_text().replace(f"{rule} > 60", f"{rule} > 600")
    assert broken != (PROM_DIR / "rules.yml").read_text()
    (tmp_path / "rules.yml").write_text(broken)
    shutil.copy(PROM_DIR / "rules_test.yml", tmp_path / "rules_test.yml")
    result = _promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "EndToEndLatencyHigh" in result.stdout + result.stderr


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [e for value in node.values() for e in _exprs(value)]
    if isinstance(node, list):
        return [e for value in node for e in _exprs(value)]
    return []


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (Grafana variables replaced) as a recording rule."""
    dashboard = json.loads((PROM_DIR.parent / "grafana" / "audioguard-dashboard.json").read_text())
    exprs = _exprs(dashboard["panels"])
    assert exprs
    substitutions = {"$__rate_interval": "5m", "$tenant": ".*", "$instance": ".*"}
    rules = []
    for index, expr in enumerate(exprs):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}:check", "expr": expr})
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = _promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
