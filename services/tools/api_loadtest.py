"""`audioguard loadtest api`: upload+wait through the HTTP API under locust, one API process and
one worker process on the embedded broker, at rising numbers of concurrent clients.

Everything is on loopback and bounded (users x seconds per phase). It prints, per phase, the
requests per second, p50 / p99 latency of upload+wait, how many answers were 200 with a verdict
and what the rest were (202 = no verdict within the wait, 429, 503), and the API's resident
memory, so the breaking point and what the API does past it can be read off the table. A
benchmark prints numbers; it asserts nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

LOCUSTFILE = """
import os
from locust import HttpUser, constant, task

CLIP = open(os.environ["LT_CLIP"], "rb").read()
HEADERS = {"Authorization": "Bearer " + os.environ["LT_TOKEN"], "Prefer": "wait=" + os.environ["LT_WAIT"]}


class Uploader(HttpUser):
    wait_time = constant(0)

    @task
    def upload_and_wait(self):
        files = {"file": ("clip.wav", CLIP, "audio/wav")}
        with self.client.post(
            "/v1/detections", files=files, headers=HEADERS, name="upload+wait", catch_response=True
        ) as answer:
            if answer.status_code == 200:
                answer.success()
            else:
                answer.failure("status %d" % answer.status_code)
"""


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _clip(path: Path, seconds: float) -> Path:
    import io
    import wave

    import numpy as np

    t = np.arange(int(16000 * seconds)) / 16000
    samples = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    path.write_bytes(buffer.getvalue())
    return path


def api_load(
    database_url: str,
    store_url: str,
    users: list[int],
    seconds: float = 15.0,
    clip_seconds: float = 2.0,
    wait_seconds: int = 20,
) -> list[dict[str, Any]]:
    import httpx

    from api.keys import ApiKeys, migrate_api
    from consumers.transports.kafka import create_topics, tenant_topics
    from services.local.broker import EmbeddedBroker
    from services.settings import KafkaSettings

    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="audioguard-apiload-")))
        broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "tansu.log"))
        tenant = f"lt-api-{uuid.uuid4().hex[:6]}"
        group = f"apiload-{tenant}"
        create_topics(
            KafkaSettings(bootstrap_servers=broker.bootstrap_servers, group_id=group), tenant_topics([tenant])
        )
        with __import__("socket").socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if k != "AUDIOGUARD_CONFIG"}
        env.update(
            {
                "AUDIOGUARD_TENANTS": json.dumps([tenant]),
                "AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "AUDIOGUARD_KAFKA__GROUP_ID": group,
                "AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS": json.dumps({tenant: [str(workdir / tenant)]}),
                "AUDIOGUARD_STORE__URL": store_url,
                "AUDIOGUARD_DATABASE__URL": database_url,
                "AUDIOGUARD_API__PORT": str(port),
                "AUDIOGUARD_API__MAX_WAIT_SECONDS": str(wait_seconds),
                # the breaking point of the pipeline, not of the per-client limit
                "AUDIOGUARD_API__RATE_LIMIT_PER_SECOND": "100000",
                "AUDIOGUARD_API__RATE_LIMIT_BURST": "100000",
                "AUDIOGUARD_LOG_LEVEL": "WARNING",
                "AUDIOGUARD_DEVICE": "cpu",
            }
        )
        migrate_api(database_url)
        processes = []
        for name in ("worker", "api"):
            log = (workdir / f"{name}.log").open("ab")
            command = ["worker"] if name == "worker" else ["api", "serve"]
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *command], env=env, stdout=log, stderr=log
            )
            processes.append(process)
            stack.callback(_stop, process)
        api_process = processes[1]
        url = f"http://127.0.0.1:{port}"
        token = ApiKeys(database_url).create(tenant, "loadtest").token
        clip = _clip(workdir / "clip.wav", clip_seconds)
        _warm_up(httpx, url, token, clip.read_bytes())
        locustfile = workdir / "locustfile.py"
        locustfile.write_text(LOCUSTFILE, encoding="utf-8")
        for count in users:
            prefix = workdir / f"u{count}"
            run_env = {**env, "LT_CLIP": str(clip), "LT_TOKEN": token, "LT_WAIT": str(wait_seconds)}
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "locust",
                    "-f",
                    str(locustfile),
                    "--headless",
                    "-u",
                    str(count),
                    "-r",
                    str(count),
                    "-t",
                    f"{int(seconds)}s",
                    "--host",
                    url,
                    "--csv",
                    str(prefix),
                    "--only-summary",
                    "--stop-timeout",
                    str(wait_seconds + 5),
                    "--loglevel",
                    "ERROR",
                ],
                env=run_env,
                check=False,
                capture_output=True,
                timeout=seconds + wait_seconds + 120,
            )
            rows.append(_phase(prefix, count, _rss_mib(api_process.pid)))
    return rows


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _warm_up(httpx: Any, url: str, token: str, data: bytes) -> None:
    deadline = time.monotonic() + 180
    with httpx.Client(base_url=url, timeout=90) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.post(
                    "/v1/detections",
                    files={"file": ("clip.wav", data, "audio/wav")},
                    headers={"Authorization": f"Bearer {token}", "Prefer": "wait=60"},
                )
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
    raise RuntimeError("the API and worker never answered a first detection")


def _phase(prefix: Path, users: int, rss: float) -> dict[str, Any]:
    with open(f"{prefix}_stats.csv", encoding="utf-8") as handle:
        stats = {row["Name"]: row for row in csv.DictReader(handle)}
    total = stats.get("upload+wait") or stats.get("Aggregated") or {}
    failures: dict[str, int] = {}
    with open(f"{prefix}_failures.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            failures[row["Error"].replace("CatchResponseError(", "").rstrip(")").strip("'")] = int(
                row["Occurrences"]
            )
    requests = int(total.get("Request Count", 0) or 0)
    return {
        "users": users,
        "requests": requests,
        "ok_200": requests - int(total.get("Failure Count", 0) or 0),
        "rps": float(total.get("Requests/s", 0) or 0),
        "p50_s": float(total.get("50%", 0) or 0) / 1000,
        "p99_s": float(total.get("99%", 0) or 0) / 1000,
        "other": failures,
        "api_rss_mib": round(rss, 1),
    }
