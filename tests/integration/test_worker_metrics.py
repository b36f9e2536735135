"""The worker's metrics, probes and structured logs, read over real HTTP from a real worker."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink
from services.health import Heartbeat, start_health_server
from services.logs import configure_logging
from services.tools.worker import build_worker
from tests.support.pipeline import RunningWorker, make_settings, provision, publish_clips, publish_raw


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    """Sum of the series of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def test_a_worker_counts_every_outcome_and_logs_with_the_uploads_ids(broker, detector, tenants, audio_root):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=2)
    keys = publish_clips(settings, tenant, audio_root, 4, seconds=1.5)
    publish_raw(
        KafkaSink(settings.kafka),
        [OutRecord(tenant=tenant, destination="arrivals", key=b"bad-1", value=b'{"broken": ')],
    )
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream=stream)
    worker = build_worker(settings, detector=detector)  # the default hooks: consumers.instrumentation
    worker.pipeline.hooks.refresh_s = 0.2
    heartbeat = Heartbeat()
    worker.pipeline.hooks.heartbeat = heartbeat
    try:
        with (
            start_health_server(0, host="127.0.0.1", ready=lambda: True, alive=heartbeat) as health,
            RunningWorker(settings, detector, worker=worker) as running,
        ):
            assert running.wait_for(lambda: worker.pipeline.stats.acked >= 5, timeout=120)
            url = f"http://127.0.0.1:{health.port}"
            # the slow gauges refresh every 0.2 s here: wait for in-flight and lag to settle
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                found = samples(get(url + "/metrics")[1])
                settled = value(found, "audioguard_in_flight_events", tenant=tenant) == 0
                lag_series = [k for k in found if k[0] == "audioguard_consumer_lag_messages"]
                if settled and any(("tenant", tenant) in ls for _, ls in lag_series):
                    break
                time.sleep(0.2)
            assert get(url + "/healthz")[0] == 200
    finally:
        logging.getLogger().removeHandler(handler)

    assert value(found, "audioguard_events_consumed_total", tenant=tenant) == 5
    assert value(found, "audioguard_events_acked_total", tenant=tenant) == 5
    assert value(found, "audioguard_verdicts_total", tenant=tenant) == 4
    assert (
        value(
            found, "audioguard_dead_letters_total", tenant=tenant, category="poison", reason="malformed_json"
        )
        == 1
    )
    assert value(found, "audioguard_end_to_end_seconds_count", tenant=tenant) == 4
    assert value(found, "audioguard_queue_wait_seconds_count", tenant=tenant) == 4
    assert value(found, "audioguard_score_count", tenant=tenant, model_version=detector.meta.version) == 4
    assert value(found, "audioguard_model_latency_seconds_count", device="cpu") >= 1
    assert value(found, "audioguard_batch_windows_count") >= 1
    assert value(found, "audioguard_in_flight_events", tenant=tenant) == 0
    arrivals = kafka_topic("arrivals", tenant)
    assert value(found, "audioguard_consumer_lag_messages", tenant=tenant, topic=arrivals) == 0
    assert value(found, "audioguard_last_heartbeat_timestamp_seconds") > time.time() - 60
    assert worker.pipeline.hooks.errors == 0

    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    published = [line for line in lines if line.get("message") == "verdict published"]
    assert {line["idempotency_key"] for line in published} == set(keys)
    assert all(line["tenant"] == tenant and line.get("event_id") for line in published)
    dead = [line for line in lines if line.get("message") == "dead letter acked"]
    assert [line["reason"] for line in dead] == ["malformed_json"] and dead[0]["tenant"] == tenant


def test_worker_command_serves_probes_ready_only_after_model_warmup_and_transport(
    broker, tenants, audio_root: Path
):
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    keys = publish_clips(settings, tenant, audio_root, 2, seconds=1.0)
    port = free_port()
    env = dict(os.environ)
    env.pop("AUDIOGUARD_CONFIG", None)
    env.update(
        AUDIOGUARD_TENANTS=json.dumps([tenant]),
        AUDIOGUARD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        AUDIOGUARD_KAFKA__GROUP_ID=f"metrics-{tenant}",
        AUDIOGUARD_STORAGE__TENANT_FILE_ROOTS=json.dumps({tenant: [str(audio_root / tenant)]}),
        AUDIOGUARD_DEVICE="cpu",
        AUDIOGUARD_LOG_LEVEL="WARNING",
        AUDIOGUARD_DRAIN_SECONDS="5",
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    answers: list[tuple[int, str]] = []
    ready_after = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answers.append(get(url + "/readyz", timeout=2))
            except OSError:
                time.sleep(0.05)
                continue
            if answers[-1][0] == 200:
                ready_after = time.monotonic() - started
                break
            time.sleep(0.05)
        assert ready_after is not None, answers[-3:]
        print(f"\ncold start (process start -> /readyz 200): {ready_after:.2f} s")
        # it said "not ready" first, naming what was missing (the model loads after the server starts)
        assert answers[0][0] == 503 and "not ready" in answers[0][1]
        assert get(url + "/healthz")[0] == 200
        deadline = time.monotonic() + 60
        verdicts = 0.0
        while time.monotonic() < deadline and verdicts < len(keys):
            found = samples(get(url + "/metrics")[1])
            verdicts = value(found, "audioguard_verdicts_total", tenant=tenant)
            time.sleep(0.3)
        assert verdicts == len(keys)
        assert value(found, "audioguard_ready") == 1
        info = [ls for (n, ls) in found if n == "audioguard_worker_info"]
        assert info and ("transport", "kafka") in info[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
