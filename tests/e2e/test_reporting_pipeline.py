"""The reporting app end to end: Tansu + the faust app in its own process + PostgreSQL.

Verdicts (duplicates and a re-score included), dead letters and invalid records go in; every
verdict comes out exactly once per (tenant, key, model version), invalid records land in the
pipeline's own DLQ with their reasons, a SIGKILL mid-stream loses and duplicates nothing, and
the database going away pauses the app (lag visible) until it returns.
The sink's rate is printed (rows/s), never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from consumers.tenancy import kafka_topic
from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink, create_topics, read_topic, tenant_topics
from reporting.commands import model_eer
from reporting.records import REPORTING_DLQ_TOPIC
from reporting.store import migrate_store, query
from schemas import Feedback
from services.cli import main as main_cli
from services.detector.training.metrics import eer
from services.local.broker import EmbeddedBroker
from services.settings import KafkaSettings
from tests.support.reporting import dead_letter, verdict_bytes
from tests.support.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
N_PER_TENANT = int(os.environ.get("AUDIOGUARD_TEST_REPORTING_N", "300"))


class ReportingApp:
    """`audioguard report run` in a process of its own (so it can be SIGKILLed)."""

    def __init__(
        self, bootstrap: str, url: str, app_id: str, workdir: Path, log_format: str = "text"
    ) -> None:
        self.args = [
            sys.executable, "-m", "services.cli", "report", "run", "--database-url", url,
            "--bootstrap-servers", bootstrap, "--app-id", app_id, "--data-dir", str(workdir / "faust"),
            "--batch-records", "200", "--batch-seconds", "0.2",
        ]  # fmt: skip
        self.log = workdir / "reporting.log"
        self.log_format = log_format
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = os.environ | {"PYTHONPATH": str(ROOT), "AUDIOGUARD_LOG_FORMAT": self.log_format}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of this module's own: the app reads every tenant's topics, not only this test's."""
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu-reporting") / "tansu.log") as running:
        yield running


@pytest.fixture
def app_factory(broker: EmbeddedBroker, postgres_url: str, tmp_path: Path) -> Iterator[ReportingApp]:
    app = ReportingApp(broker.bootstrap_servers, postgres_url, f"reporting-{uuid.uuid4().hex[:6]}", tmp_path)
    try:
        yield app
    finally:
        app.kill(signal.SIGKILL)


def _publish(settings: KafkaSettings, records: list[OutRecord]) -> None:
    sink = KafkaSink(settings)
    futures = [sink.publish(r) for r in records]
    sink.flush(30)
    for future in futures:
        future.result(30)


def _rows(url: str, tenants: list[str]) -> tuple[int, int]:
    """(rows, distinct (tenant, key, model version)) of these tenants: the module's broker also
    holds the other tests' topics, which the app reads too."""
    _, rows = query(
        url,
        "SELECT count(*), count(DISTINCT (tenant_id, idempotency_key, model_version))"
        " FROM reporting.verdicts WHERE tenant_id = ANY(%s)",
        (tenants,),
    )
    return int(rows[0][0]), int(rows[0][1])


def _wait(predicate, timeout: float, app: ReportingApp) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert app.proc is not None and app.proc.poll() is None, f"reporting app exited:\n{app.tail()}"
        time.sleep(0.25)
    raise AssertionError(f"timed out; app log:\n{app.tail()}")


def _records(tenants: list[str], n: int, offset: int = 0) -> tuple[list[OutRecord], set[tuple[str, str]]]:
    records, expected = [], set()
    for tenant in tenants:
        for i in range(offset, offset + n):
            key = f"{tenant}:clip-{i}"
            value = verdict_bytes(tenant, key, (i % 100) / 100)
            records.append(OutRecord(tenant=tenant, destination="verdicts", key=key.encode(), value=value))
            expected.add((tenant, key))
    return records, expected


def test_every_verdict_lands_exactly_once_and_invalid_records_are_dead_lettered(
    broker: EmbeddedBroker, postgres_url: str, tenants: list[str], app_factory: ReportingApp
) -> None:
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    tenants = tenants[:2]
    create_topics(settings, tenant_topics(tenants, ("verdicts", "dlq")), partitions=2)
    feedback_topic = f"audioguard.feedback.{tenants[1]}"
    create_topics(settings, [REPORTING_DLQ_TOPIC, feedback_topic])
    migrate_store(postgres_url)
    records, expected = _records(tenants, N_PER_TENANT)
    duplicates = records[: N_PER_TENANT // 5]  # a replay: the same records again
    rescore_key = f"{tenants[0]}:clip-1"
    rescore = OutRecord(
        tenant=tenants[0], destination="verdicts", key=rescore_key.encode(),
        value=verdict_bytes(tenants[0], rescore_key, 0.99, model_version="2.0.0"),
    )  # fmt: skip
    invalid = [
        OutRecord(tenant=tenants[0], destination="verdicts", key=b"bad-1", value=b"{not json"),
        OutRecord(tenant=tenants[1], destination="verdicts", key=b"bad-2",
                  value=verdict_bytes(tenants[0], "someone-else", 0.5)),
    ]  # fmt: skip
    letters = []
    for i in range(3):
        value, headers = dead_letter(tenants[1], f"poison-{i}")
        letters.append(OutRecord(tenant=tenants[1], destination="dlq", key=f"p{i}".encode(), value=value,
                                 headers=tuple(headers)))  # fmt: skip
    # moderators' decisions on tenant 1's uploads, twice for some (the later one wins)
    truth = {i: "synthetic" if (i * 7919) % 3 else "bona_fide" for i in range(N_PER_TENANT)}
    decisions = [
        _decision(tenants[1], f"{tenants[1]}:clip-{i}", truth[i], minute=1) for i in range(N_PER_TENANT)
    ] + [_decision(tenants[1], f"{tenants[1]}:clip-{i}", "bona_fide", minute=0) for i in range(20)]
    decisions.append(OutRecord(tenant=tenants[1], destination="verdicts", key=b"x", value=b"{}"))
    _publish(settings, records + duplicates + [rescore] + invalid + letters)
    _publish_to(settings, feedback_topic, decisions)

    app_factory.start()
    started = time.monotonic()
    want = len(expected) + 1
    _wait(lambda: _rows(postgres_url, tenants)[0] >= want, 120, app_factory)
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # anything extra (a duplicate) would arrive now
    total, distinct = _rows(postgres_url, tenants)
    assert total == distinct == want
    _, keys = query(
        postgres_url,
        "SELECT tenant_id, idempotency_key FROM reporting.verdicts WHERE tenant_id = ANY(%s)",
        (tenants,),
    )
    assert {tuple(k) for k in keys} == expected
    letters_of = f"reporting.dead_letters WHERE tenant_id = '{tenants[1]}'"
    _wait(lambda: _count(postgres_url, letters_of) == 3, 30, app_factory)
    _, span = query(
        postgres_url, "SELECT extract(epoch FROM max(ingested_at) - min(ingested_at)) FROM reporting.verdicts"
    )
    print(f"\nreporting sink: {want} rows in {elapsed:.1f} s from start (join included); "
          f"{want / max(float(span[0][0]), 1e-3):.0f} rows/s first-to-last insert")  # fmt: skip

    reasons = [
        dict(h).get("ag-reporting-reason", b"").decode()
        for _, _, h in read_topic(settings, REPORTING_DLQ_TOPIC, idle=2.0, timeout=30)
    ]
    assert sorted(reasons) == ["schema_violation", "schema_violation", "tenant_mismatch"]

    _wait(lambda: _count(postgres_url, "reporting.feedback") == N_PER_TENANT, 30, app_factory)
    scores = {i: (i % 100) / 100 for i in range(N_PER_TENANT)}
    bona = np.array([scores[i] for i in scores if truth[i] == "bona_fide"])
    synth = np.array([scores[i] for i in scores if truth[i] == "synthetic"])
    assert model_eer(postgres_url, "1.0.0") == pytest.approx(eer(bona, synth)[0])

    app_factory.kill(signal.SIGTERM)  # faust's worker stops, commits what was acked, exits
    assert app_factory.proc is not None and app_factory.proc.returncode == 0, app_factory.tail()


def test_the_app_logs_json_lines_faust_s_own_included(
    broker: EmbeddedBroker, postgres_url: str, tenants: list[str], tmp_path: Path
) -> None:
    """The log pipeline parses one JSON object per line: faust's worker must not swap the handler."""
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    create_topics(settings, tenant_topics(tenants[2:3], ("verdicts",)))
    migrate_store(postgres_url)
    records, _ = _records(tenants[2:3], 5)
    _publish(settings, records)
    app_id = f"reporting-{uuid.uuid4().hex[:6]}"
    app = ReportingApp(broker.bootstrap_servers, postgres_url, app_id, tmp_path, log_format="json")
    app.start()
    try:
        _wait(lambda: _rows(postgres_url, tenants[2:3])[0] >= 5, 120, app)
    finally:
        app.kill(signal.SIGTERM)
    lines = [line for line in app.log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # a coloured faust line would not parse
    loggers = {entry.get("logger", "") for entry in entries}
    assert any(name.startswith(("faust", "mode", "aiokafka")) for name in loggers), loggers
    assert app.proc is not None and app.proc.returncode == 0, app.tail()


def _decision(tenant: str, key: str, truth: str, minute: int) -> OutRecord:
    value = Feedback(
        idempotency_key=key, tenant_id=tenant, truth=truth,  # type: ignore[arg-type]
        decided_at=datetime(2026, 11, 5, 12, minute, tzinfo=UTC),
    ).model_dump_json().encode()  # fmt: skip
    return OutRecord(tenant=tenant, destination="verdicts", key=key.encode(), value=value)


def _publish_to(settings: KafkaSettings, topic: str, records: list[OutRecord]) -> None:
    """Produce to a topic outside the worker's destinations (the feedback topic)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for record in records:
        producer.produce(topic, key=record.key, value=record.value)
    assert producer.flush(30) == 0


def _count(url: str, table: str) -> int:
    return int(query(url, f"SELECT count(*) FROM {table}")[1][0][0])


def test_a_sigkill_mid_stream_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, postgres_url: str, tenants: list[str], app_factory: ReportingApp
) -> None:
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    tenant = tenants[0]
    create_topics(settings, tenant_topics([tenant], ("verdicts", "dlq")), partitions=2)
    migrate_store(postgres_url)
    first, expected = _records([tenant], N_PER_TENANT)
    _publish(settings, first)
    app_factory.start()
    _wait(lambda: _rows(postgres_url, [tenant])[0] > 0, 120, app_factory)
    second, more = _records([tenant], 2 * N_PER_TENANT, offset=N_PER_TENANT)
    _publish(settings, second)
    # mid-stream: part of `second` written, its offsets perhaps not yet committed (1 s interval)
    deadline = time.monotonic() + 60
    while _rows(postgres_url, [tenant])[0] <= N_PER_TENANT and time.monotonic() < deadline:
        time.sleep(0.02)
    app_factory.kill(signal.SIGKILL)
    killed_at = _rows(postgres_url, [tenant])[0]
    app_factory.start()
    want = len(expected | more)
    _wait(lambda: _rows(postgres_url, [tenant])[0] >= want, 120, app_factory)
    time.sleep(1.5)
    topic_records = sum(
        1 for _ in read_topic(settings, kafka_topic("verdicts", tenant), idle=2.0, timeout=30)
    )
    total, distinct = _rows(postgres_url, [tenant])
    print(
        f"\nSIGKILL at {killed_at} rows; after the restart {total} ({distinct} distinct); "
        f"topic {topic_records}"
    )
    assert topic_records == total == distinct == want


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name)]
    return sum(values)


def test_database_down_pauses_the_app_and_it_resumes_without_loss(
    broker: EmbeddedBroker, postgres_url: str, tenants: list[str], tmp_path: Path
) -> None:
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    tenant = tenants[0]
    create_topics(settings, tenant_topics([tenant], ("verdicts", "dlq")), partitions=2)
    migrate_store(postgres_url)
    database = urllib.parse.urlsplit(postgres_url)
    proxy = TcpProxy(database.hostname or "127.0.0.1", database.port or 5432).start()
    via_proxy = postgres_url.replace(f":{database.port}/", f":{proxy.port}/")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    app = ReportingApp(broker.bootstrap_servers, via_proxy, f"reporting-{uuid.uuid4().hex[:6]}", tmp_path)
    app.args += ["--metrics-port", str(metrics_port), "--tenant", tenant]
    try:
        first, expected = _records([tenant], N_PER_TENANT)
        _publish(settings, first)
        app.start()
        _wait(lambda: _rows(postgres_url, [tenant])[0] == N_PER_TENANT, 120, app)
        proxy.cut()
        second, more = _records([tenant], N_PER_TENANT, offset=N_PER_TENANT)
        _publish(settings, second)
        _wait(lambda: _metric(metrics_port, "audioguard_reporting_lag_messages") > 0, 60, app)
        assert _metric(metrics_port, "audioguard_reporting_database_up") == 0
        time.sleep(3)  # held: the app waits, alive, and writes nothing
        assert _rows(postgres_url, [tenant])[0] == N_PER_TENANT
        lag_during = _metric(metrics_port, "audioguard_reporting_lag_messages")
        proxy.start()
        want = len(expected | more)
        _wait(lambda: _rows(postgres_url, [tenant])[0] >= want, 120, app)
        _wait(lambda: _metric(metrics_port, "audioguard_reporting_lag_messages") == 0, 30, app)
        time.sleep(1)
        assert _rows(postgres_url, [tenant]) == (want, want)
        print(f"\ndatabase outage: lag {lag_during:.0f} while down, 0 after; {want} rows, none lost")
    finally:
        app.kill(signal.SIGKILL)
        proxy.stop()


def test_the_worker_s_verdicts_land_once_each_and_feedback_joins_them(
    broker: EmbeddedBroker, postgres_url: str, tenants: list[str], audio_root: Path, tmp_path: Path
) -> None:
    """The real worker (null scorer) answers arrivals, re-delivered ones included; the app
    writes each upload once; CSV feedback joins by idempotency key; the model view's EER is the
    detector metric's on the same scores."""
    from services.detector.null import load_null_scorer
    from tests.support.pipeline import RunningWorker, make_settings, provision, publish_clips, verdicts_by_key

    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings)
    migrate_store(postgres_url)
    keys = publish_clips(settings, tenant, audio_root, 24, seconds=1.0)
    again = publish_clips(settings, tenant, audio_root, 6, seconds=1.0)  # the same arrivals, re-sent
    assert again == keys[:6]
    with RunningWorker(settings, load_null_scorer()) as worker:
        assert worker.wait_for(lambda: len(verdicts_by_key(settings, tenant)) == len(keys), 120)
    published = verdicts_by_key(settings, tenant)
    app = ReportingApp(broker.bootstrap_servers, postgres_url, f"reporting-{uuid.uuid4().hex[:6]}", tmp_path)
    app.args += ["--tenant", tenant]
    try:
        app.start()
        _wait(lambda: _rows(postgres_url, [tenant])[0] >= len(keys), 120, app)
        time.sleep(1.5)
        assert _rows(postgres_url, [tenant]) == (len(keys), len(keys))
        feedback = tmp_path / "feedback.csv"
        truth = {key: "synthetic" if i % 2 else "bona_fide" for i, key in enumerate(keys)}
        feedback.write_text(
            "tenant_id,idempotency_key,truth\n" + "".join(f"{tenant},{k},{t}\n" for k, t in truth.items())
        )
        assert main_cli(["report", "feedback", "load", str(feedback), "--database-url", postgres_url]) == 0
        version = published[keys[0]][0]["model"]["version"]
        score = {k: published[k][0]["score"] for k in keys}
        bona = np.array([score[k] for k in keys if truth[k] == "bona_fide"])
        synth = np.array([score[k] for k in keys if truth[k] == "synthetic"])
        assert model_eer(postgres_url, version) == pytest.approx(eer(bona, synth)[0])
        print(f"\nworker -> app: {sum(len(v) for v in published.values())} verdict records, {len(keys)} rows")
    finally:
        app.kill(signal.SIGKILL)
