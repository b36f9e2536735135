"""checkov over everything that deploys: terraform/ (modules through the example root),
the Dockerfile and the rendered Kubernetes manifests. No check may fail, and every skipped
check carries its justification in a `checkov:skip=ID: reason` comment beside the resource.

Offline, checkov has no severities (Prisma Cloud assigns them), so "no failed HIGH or
CRITICAL check" is enforced as "no failed check at all".

checkov pins boto3==1.35.49, packaging<24 and bundles its own `hcl2` module (bc-python-hcl2),
which would downgrade the project's boto3 and overwrite python-hcl2 in .venv. So it lives in
its own virtualenv, .venv/tools/checkov (created here on first use, from PyPI, pinned).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKOV_VERSION = "3.3.30"
TOOL_VENV = ROOT / ".venv" / "tools" / "checkov"
CHECKOV = TOOL_VENV / "bin" / "checkov"
SKIP = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::\s*(.*))?")
DEPLOY_FILES = [
    ROOT / "Dockerfile",
    *sorted((ROOT / "terraform").rglob("*.tf")),
    *sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")),
]


def _checkov_env() -> dict[str, str]:
    env = dict(os.environ)
    # no calls home: no platform key, no guideline download, no version check
    env.update(BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false", ANSI_COLORS_DISABLED="1")
    env.pop("BC_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def checkov() -> Path:
    installed = (
        CHECKOV.exists()
        and CHECKOV_VERSION
        in subprocess.run(
            [str(CHECKOV), "--version"], capture_output=True, text=True, env=_checkov_env(), timeout=120
        ).stdout
    )
    if not installed:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TOOL_VENV)], check=True, timeout=120)
        subprocess.run(
            [
                str(TOOL_VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                f"checkov=={CHECKOV_VERSION}",
            ],
            check=True,
            timeout=900,
        )
    return CHECKOV


def run_checkov(checkov: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(checkov), *args, "--output", "json", "--compact", "--skip-download", "--soft-fail"],
        capture_output=True,
        text=True,
        env=_checkov_env(),
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    return data if isinstance(data, list) else [data]


def _render_k8s(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_deploy_k8s import GROUPS, group  # the same rendering the schema checks use

    for transport, tenant in GROUPS:
        _, docs = group(transport, tenant)
        (out / f"{transport}-{tenant or 'all'}.yaml").write_text(yaml.safe_dump_all(docs))


@pytest.fixture(scope="module")
def reports(checkov: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    rendered = tmp_path_factory.mktemp("k8s")
    _render_k8s(rendered)
    out: dict[str, dict[str, Any]] = {}
    for report in run_checkov(checkov, "-d", "terraform", "--framework", "terraform"):
        out["terraform"] = report
    for report in run_checkov(checkov, "-f", "Dockerfile", "--framework", "dockerfile"):
        out["dockerfile"] = report
    for report in run_checkov(checkov, "-d", str(rendered), "--framework", "kubernetes"):
        out["kubernetes"] = report
    return out


@pytest.mark.parametrize("framework,minimum", [("terraform", 150), ("dockerfile", 50), ("kubernetes", 200)])
def test_no_failed_check(reports: dict[str, dict[str, Any]], framework: str, minimum: int) -> None:
    report = reports[framework]
    failed = report["results"]["failed_checks"]
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']} {c['file_path']}" for c in failed)
    passed = report["summary"]["passed"]
    print(f"checkov {framework}: passed={passed} skipped={report['summary']['skipped']} failed=0")
    assert passed >= minimum, f"only {passed} checks ran: did checkov find the files?"


def test_every_skip_is_justified_beside_its_resource(reports: dict[str, dict[str, Any]]) -> None:
    comments: dict[str, list[str]] = {}
    for path in DEPLOY_FILES:
        for match in SKIP.finditer(path.read_text()):
            reason = (match.group(2) or "").strip()
            assert len(reason) >= 30, f"{path.name}: skip of {match.group(1)} needs a real justification"
            comments.setdefault(match.group(1), []).append(reason)
    skipped = {c["check_id"] for r in reports.values() for c in r["results"]["skipped_checks"]}
    assert skipped <= set(comments), f"skipped without a comment in our files: {skipped - set(comments)}"
    assert set(comments) <= skipped, (
        f"stale skip comments (check no longer applies): {set(comments) - skipped}"
    )


def test_checkov_catches_insecure_code_offline(checkov: Path, tmp_path: Path) -> None:
    # the scans above are only evidence if the tool really flags bad code here, offline
    (tmp_path / "main.tf").write_text(
        'resource "aws_s3_bucket" "open" {\n  bucket = "x"\n  acl    = "public-read"\n}\n'
        'resource "aws_kinesis_stream" "plain" {\n  name = "s"\n  shard_count = 1\n}\n'
    )
    (report,) = run_checkov(checkov, "-d", str(tmp_path), "--framework", "terraform")
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_AWS_20", "CKV_AWS_43"} <= failed, failed
