"""A real Prometheus server scrapes a running worker and answers queries about its verdicts.

Runs Debian's `prometheus` binary (Makefile APT_PACKAGES) on a free loopback port with temp
storage, a 1 s scrape of the worker's metrics port and the shipped rules (deploy/prometheus
/rules.yml), then reads the counts back through /api/v1/query.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.health import Heartbeat, start_health_server
from services.tools.worker import build_worker
from tests.support.pipeline import RunningWorker, make_settings, provision, publish_clips

PROMETHEUS = shutil.which("prometheus")
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (make system-deps installs Debian's prometheus)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def query(base: str, promql: str) -> list[dict[str, Any]]:
    answer = api(base, "/api/v1/query", query=promql)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def verdicts_at_least(worker: Any, count: int) -> Any:
    return lambda: worker.pipeline.stats.verdicts >= count


def test_prometheus_scrapes_the_worker_and_answers_for_its_verdicts(
    broker, detector, tenants, audio_root, tmp_path: Path
):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    worker = build_worker(settings, detector=detector)
    heartbeat = Heartbeat()
    worker.pipeline.hooks.heartbeat = heartbeat
    with start_health_server(0, host="127.0.0.1", ready=lambda: True, alive=heartbeat) as health:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        shutil.copy(RULES, tmp_path / "rules.yml")
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n"
            "  - job_name: audioguard\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{health.port}']}}]\n"
        )
        assert PROMETHEUS is not None
        server = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            with RunningWorker(settings, detector, worker=worker) as running:
                deadline = time.monotonic() + 60
                up: list[dict[str, Any]] = []
                while time.monotonic() < deadline and not up:
                    with contextlib.suppress(OSError):  # not listening yet
                        up = query(base, 'up{job="audioguard"} == 1')
                    time.sleep(0.5)
                assert up, "Prometheus never scraped the worker"
                promql = f'sum(audioguard_verdicts_total{{job="audioguard",tenant="{tenant}"}})'
                # two rounds: a rate needs the counter scraped before and after it grew
                keys: list[str] = []
                for seed, count in ((0, 2), (100, 3)):
                    keys += publish_clips(settings, tenant, audio_root, count, seed=seed, seconds=1.0)
                    assert running.wait_for(verdicts_at_least(worker, len(keys)), timeout=120)
                    counted = 0.0
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and counted < len(keys):
                        result = query(base, promql)
                        counted = float(result[0]["value"][1]) if result else 0.0
                        time.sleep(0.5)
                    assert counted == len(keys)
                # a rate Prometheus computed from the scraped counter, and a latency quantile
                rate = query(base, f'sum(increase(audioguard_events_acked_total{{tenant="{tenant}"}}[1m]))')
                assert rate and float(rate[0]["value"][1]) > 0
                p99 = query(
                    base,
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f'audioguard_end_to_end_seconds_bucket{{tenant="{tenant}"}}[1m])))',
                )
                assert p99 and float(p99[0]["value"][1]) > 0
                p99_seconds = float(p99[0]["value"][1])
                print(f"\nPrometheus: verdicts={counted:.0f}, end-to-end p99 ~ {p99_seconds:.2f} s")
            # the shipped rules load and evaluate against real series without errors
            groups = api(base, "/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert rules and all(rule["health"] != "err" for rule in rules), [
                (r["name"], r.get("lastError")) for r in rules if r["health"] == "err"
            ]
        finally:
            server.terminate()
            try:
                _out, err = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                _out, err = server.communicate()
    assert server.returncode in (0, -15), err[-2000:]
