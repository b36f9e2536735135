"""`audioguard dlq` against the real embedded broker: filters, dry run, rate, loop guard,
provenance across a second failure, and double replay through a real worker.

Dead letters are either written with the worker's own envelope code (`tests.support.dead_letters`)
or produced by a real worker that cannot find the audio (poison ``missing_object``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumers.tenancy import kafka_topic
from consumers.transports.kafka import committed_offsets, read_topic
from dlq.envelope import dead_letter_from_record
from dlq.queues import DLQ_TOOL_GROUP
from services.local.broker import EmbeddedBroker
from services.settings import DlqSettings
from tests.support.audio import encode, speechlike
from tests.support.dead_letters import Spec, dlq, json_lines, write_dead_letters
from tests.support.pipeline import RunningWorker, make_settings, provision, read_destination

pytestmark = pytest.mark.timeout(300)

SPECS = [
    Spec("poison", "missing_object", "c-missing-1", attempt=1, age=timedelta(minutes=5)),
    Spec("poison", "missing_object", "c-missing-2", attempt=1, age=timedelta(hours=3)),
    Spec("poison", "undecodable_audio", "c-decode-1", attempt=1, age=timedelta(minutes=20)),
    Spec("retryable", "s3_unavailable", "c-s3-1", attempt=4, age=timedelta(minutes=2)),
    Spec("retryable", "s3_unavailable", "c-s3-2", attempt=6, age=timedelta(days=2)),
    Spec("fatal", "auth", "c-auth-1", attempt=1, age=timedelta(minutes=1)),
    Spec(
        "poison", "schema_violation", "c-schema-1", payload=b'{"not": "an arrival"', age=timedelta(minutes=3)
    ),
]


def _count(settings, topic: str) -> int:  # type: ignore[no-untyped-def]
    # counted by reading: Tansu's ListOffsets high watermarks can be stale
    return sum(1 for _ in read_topic(settings.kafka, topic, idle=1.0))


def _keys(stdout: str) -> set[str]:
    return {line["content_id"] or line["idempotency_key"] for line in json_lines(stdout)}


@pytest.fixture
def seeded(broker: EmbeddedBroker, tenants: list[str], audio_root: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(broker.bootstrap_servers, tenants[:1], audio_root)
    provision(settings, partitions=2)
    tenant = tenants[0]
    write_dead_letters(settings, tenant, SPECS, f"file://{audio_root / tenant}")
    return settings, tenant


def test_filters_select_exactly_what_they_should(seeded) -> None:  # type: ignore[no-untyped-def]
    settings, tenant = seeded
    where = ("--tenant", tenant, "--bootstrap-servers", settings.kafka.bootstrap_servers, "--json")

    code, out, _ = dlq("list", *where)
    assert code == 0
    assert len(json_lines(out)) == len(SPECS)

    cases: list[tuple[tuple[str, ...], set[str]]] = [
        (("--category", "retries_exhausted"), {"c-s3-1", "c-s3-2"}),
        (("--category", "fatal"), {"c-auth-1"}),
        (("--reason", "MISSING_obj"), {"c-missing-1", "c-missing-2"}),
        (("--reason", "c-decode-1"), {"c-decode-1"}),  # text of the error message
        (("--error-class", "RetryableError"), {"c-s3-1", "c-s3-2"}),
        (("--error-class", "services.errors.FatalError"), {"c-auth-1"}),
        (("--since", "30m"), {"c-missing-1", "c-decode-1", "c-s3-1", "c-auth-1", f"{tenant}:c-schema-1"}),
        (("--since", "4h", "--until", "10m"), {"c-missing-2", "c-decode-1"}),
        (("--content-id", "c-s3-2"), {"c-s3-2"}),
        (("--key", f"{tenant}:c-missing-2"), {"c-missing-2"}),
        (("--min-attempts", "4"), {"c-s3-1", "c-s3-2"}),
        (("--min-attempts", "2", "--max-attempts", "5"), {"c-s3-1"}),
        (("--category", "poison", "--since", "1h"), {"c-missing-1", "c-decode-1", f"{tenant}:c-schema-1"}),
        (("--category", "fatal", "--reason", "missing"), set()),
    ]
    for flags, expected in cases:
        code, out, err = dlq("list", *where, *flags)
        assert code == 0, err
        assert _keys(out) == expected, flags

    code, out, _ = dlq("stats", *where)
    stats = json.loads(out)
    assert stats["total"] == len(SPECS)
    assert stats["by_category"] == {"poison": 4, "retries_exhausted": 2, "fatal": 1}
    assert stats["by_reason"]["missing_object"] == 2
    assert stats["by_error_class"]["services.errors.RetryableError"] == 2
    oldest = datetime.fromisoformat(stats["oldest"])
    newest = datetime.fromisoformat(stats["newest"])
    assert datetime.now(UTC) - oldest > timedelta(days=1, hours=23)
    assert datetime.now(UTC) - newest < timedelta(minutes=2)
    code, out, _ = dlq("stats", *where, "--since", "1h")
    assert json.loads(out)["total"] == 5

    # the human forms print tables with the same numbers
    code, out, _ = dlq("stats", *where[:-1])
    assert code == 0 and "missing_object" in out and "retries_exhausted" in out
    code, out, _ = dlq("list", *where[:-1], "--category", "fatal")
    assert code == 0 and "c-auth-1" in out and "c-s3-1" not in out


def test_show_prints_payload_headers_and_what_the_audio_uri_points_to(  # type: ignore[no-untyped-def]
    seeded, audio_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, tenant = seeded
    where = ("--tenant", tenant, "--bootstrap-servers", settings.kafka.bootstrap_servers)
    (audio_root / tenant).mkdir(parents=True, exist_ok=True)
    clip = encode(speechlike(1.0, seed=3))
    (audio_root / tenant / "c-missing-1.wav").write_bytes(clip)  # the fix arrived for this one only
    monkeypatch.setenv("AUDIOGUARD_STORAGE__FILE_ROOTS", json.dumps([str(audio_root)]))
    refs = {line["content_id"]: line["ref"] for line in json_lines(dlq("list", *where, "--json")[1])}

    code, out, _ = dlq("show", *where, refs["c-missing-2"], "--json")
    shown = json.loads(out)
    assert code == 0
    assert shown["envelope"]["reason"] == "missing_object"
    assert ("ag-dlq-reason", "missing_object") in [tuple(h) for h in shown["headers"]]
    assert json.loads(shown["payload"])["content_id"] == "c-missing-2"
    assert shown["audio"]["local_file"] == "does not exist"
    assert "missing_object" in shown["audio"]["status"]

    code, out, _ = dlq("show", *where, refs["c-missing-1"])
    assert code == 0
    assert f"local_file: {len(clip)} bytes" in out
    assert "sha256_mismatch" in out  # the seeded arrival claims other bytes: a worker would refuse it
    assert "ag-dlq-stack_digest" in out

    code, _, err = dlq("show", *where, "9:999")
    assert code == 2 and "no dead letter 9:999" in err


def test_dry_run_changes_nothing(seeded) -> None:  # type: ignore[no-untyped-def]
    settings, tenant = seeded
    where = ("--tenant", tenant, "--bootstrap-servers", settings.kafka.bootstrap_servers)
    arrivals, dlq_topic = kafka_topic("arrivals", tenant), kafka_topic("dlq", tenant)
    before = (_count(settings, arrivals), _count(settings, dlq_topic))
    assert before == (0, len(SPECS))

    code, out, err = dlq("replay", *where, "--category", "poison", "--dry-run", "--operator", "oncall-test")
    assert code == 0, err
    assert out.count("would replay:") == 4
    assert f"-> {kafka_topic('arrivals', tenant)}" in out
    audit = json_lines(err)[-1]
    assert audit["event"] == "dlq replay" and audit["options"]["dry_run"] is True
    assert audit["summary"]["would_replay"] == 4 and audit["summary"]["removed"] == 0

    assert (_count(settings, arrivals), _count(settings, dlq_topic)) == before
    committed = committed_offsets(settings.kafka, [dlq_topic], group_id=DLQ_TOOL_GROUP)
    assert all(offset < 0 for offset in committed.values())
    assert len(json_lines(dlq("list", *where, "--json")[1])) == len(SPECS)


def test_measured_rate_stays_within_ten_percent(  # type: ignore[no-untyped-def]
    broker: EmbeddedBroker, tenants: list[str], audio_root: Path, tmp_path: Path
) -> None:
    settings = make_settings(broker.bootstrap_servers, tenants[:1], audio_root)
    provision(settings, partitions=1)
    tenant = tenants[0]
    specs = [Spec("poison", "missing_object", f"r-{i:03d}") for i in range(41)]
    write_dead_letters(settings, tenant, specs, f"file://{audio_root / tenant}")
    audit_log = tmp_path / "audit.jsonl"
    code, out, err = dlq(
        "replay",
        "--tenant",
        tenant,
        "--bootstrap-servers",
        settings.kafka.bootstrap_servers,
        "--rate",
        "20/s",
        "--json",
        "--audit-log",
        str(audit_log),
    )
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["replayed"] == summary["removed"] == 41
    # the broker's own timestamps of the replayed arrivals, not the tool's clock
    from confluent_kafka import Consumer, TopicPartition  # the test reads timestamps directly

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"ts-{tenant}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(kafka_topic("arrivals", tenant), 0, 0)])
    times = []
    while len(times) < 41:
        record = consumer.poll(5)
        assert record is not None
        times.append(record.timestamp()[1] / 1000)
    consumer.close()
    broker_rate = 40 / (max(times) - min(times))
    print(
        f"\nreplay --rate 20/s: tool measured {summary['measured_rate']:.2f}/s, "
        f"broker timestamps {broker_rate:.2f}/s"
    )
    assert 18.0 <= summary["measured_rate"] <= 22.0
    assert 18.0 <= broker_rate <= 22.0
    audit = json.loads(audit_log.read_text().splitlines()[-1])
    assert audit["summary"]["replayed"] == 41 and audit["options"]["rate"] == 20.0

    # removed only after confirmation: the tool's group is committed past all 41, so nothing is left
    committed = committed_offsets(settings.kafka, [kafka_topic("dlq", tenant)], group_id=DLQ_TOOL_GROUP)
    assert list(committed.values()) == [41]
    code, out, _ = dlq(
        "stats", "--tenant", tenant, "--bootstrap-servers", settings.kafka.bootstrap_servers, "--json"
    )
    assert json.loads(out)["total"] == 0


def test_retry_tier_replay_carries_the_retry_headers(seeded) -> None:  # type: ignore[no-untyped-def]
    settings, tenant = seeded
    where = ("--tenant", tenant, "--bootstrap-servers", settings.kafka.bootstrap_servers)
    code, out, err = dlq(
        "replay", *where, "--category", "retries_exhausted", "--to", "retry-tier", "--tier", "1"
    )
    assert code == 0, err
    records = list(read_topic(settings.kafka, kafka_topic("retry", tenant, 1)))
    assert len(records) == 2
    for _key, value, headers in records:
        named = dict(headers)
        assert named["ag-retry-tier"] == b"1"
        assert int(named["ag-retry-attempt"]) in (5, 7)  # the envelope's attempt + 1
        assert float(named["ag-retry-due"]) <= datetime.now(UTC).timestamp()
        assert named["ag-replay-count"] == b"1"
        assert json.loads(value)["content_id"] in ("c-s3-1", "c-s3-2")
        assert not any(name.startswith("ag-dlq-") for name in named)
    # the others stay: the tool's group never moves past a dead letter it did not replay
    listed = json_lines(dlq("list", *where, "--json")[1])
    remaining = {line["content_id"] or "schema" for line in listed}
    assert {"c-missing-1", "c-missing-2", "c-decode-1", "c-auth-1", "schema"} <= remaining
    committed = committed_offsets(settings.kafka, [kafka_topic("dlq", tenant)], group_id=DLQ_TOOL_GROUP)
    for line in listed:
        partition, offset = map(int, line["ref"].split(":"))
        if line["category"] != "retries_exhausted":
            assert committed[(kafka_topic("dlq", tenant), partition)] <= offset
    # replayed ones stuck behind a dead letter left in the queue are marked, not listed again
    assert not any(line["category"] == "retries_exhausted" for line in listed)
    code, out, err = dlq("replay", *where, "--category", "retries_exhausted", "--to", "retry-tier", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["matched"] == 0
    assert len(list(read_topic(settings.kafka, kafka_topic("retry", tenant, 1)))) == 2
    # --from-beginning still shows everything, replayed or not
    everything = json_lines(dlq("list", *where, "--json", "--from-beginning")[1])
    assert len(everything) == len(SPECS)


def _dead_letters(settings, tenant):  # type: ignore[no-untyped-def]
    return [
        (dead_letter_from_record(value, headers)[0], dict(headers))
        for _key, value, headers in read_destination(settings, tenant, "dlq", idle=1.0)
    ]


def test_replay_through_a_real_worker(  # type: ignore[no-untyped-def]
    broker: EmbeddedBroker, tenants: list[str], audio_root: Path, detector, redis_url: str
) -> None:
    """Second failure keeps provenance; the loop guard refuses; after the fix one replay
    scores each upload once, and a second replay of the same dead letters yields no second
    scoring and no second distinct verdict."""
    tenant = tenants[0]
    settings = make_settings(
        broker.bootstrap_servers,
        [tenant],
        audio_root,
        store_url=f"{redis_url}",
        dlq=DlqSettings(max_invalid_ratio=1.0, max_consecutive=1000),
    )
    provision(settings, partitions=1)
    from consumers.transport import OutRecord
    from consumers.transports.kafka import KafkaSink
    from services.platform import arrival_for

    clips = {f"up-{i}-{tenant}": encode(speechlike(1.5, seed=40 + i)) for i in range(4)}
    sink = KafkaSink(settings.kafka)
    (audio_root / tenant).mkdir(parents=True, exist_ok=True)
    futures = []
    for content_id, data in clips.items():
        key = f"{tenant}:{content_id}"
        uri = f"file://{audio_root / tenant / content_id}.wav"  # not written yet: missing_object
        value = arrival_for(tenant, uri, data, key=key, content_id=content_id)
        futures.append(
            sink.publish(OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=value))
        )
    sink.flush(30)
    for future in futures:
        future.result(30)
    where = ("--tenant", tenant, "--bootstrap-servers", settings.kafka.bootstrap_servers)

    with RunningWorker(settings, detector) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.dead_letters >= 4, 90)

        # 1. replay before the fix: each fails again, and keeps its provenance
        code, out, err = dlq("replay", *where, "--operator", "night-shift", "--json")
        assert code == 0, err
        first = json.loads(out.splitlines()[-1])
        assert first["replayed"] == 4
        assert running.wait_for(lambda: running.worker.pipeline.stats.dead_letters >= 8, 90)
        letters = _dead_letters(settings, tenant)
        again = [(env, headers) for env, headers in letters if env.replay_count == 1]
        assert len(again) == 4
        for env, headers in again:
            assert env.reason == "missing_object"
            assert env.replay_id == first["replay_id"]
            assert headers["ag-replay-operator"] == b"night-shift"
            origin = json.loads(headers["ag-replay-origin"])
            assert origin["source"]["topic"] == kafka_topic("arrivals", tenant)
            assert origin["source"]["offset"] in range(4)
            assert origin["dead_letter"]["topic"] == kafka_topic("dlq", tenant)

        # 2. the loop guard refuses them at --max-replays 1; nothing is published or removed
        arrivals_before = _count(settings, kafka_topic("arrivals", tenant))
        code, out, err = dlq("replay", *where, "--max-replays", "1", "--json")
        assert code == 0, err
        guarded = json.loads(out.splitlines()[-1])
        assert guarded["refused_loop"] == 4 and guarded["replayed"] == 0
        assert "refused (loop guard" in err
        assert _count(settings, kafka_topic("arrivals", tenant)) == arrivals_before == 8
        assert len(json_lines(dlq("list", *where, "--json")[1])) == 4

        # 3. the fix: the audio is there now; replay scores each upload once
        for content_id, data in clips.items():
            (audio_root / tenant / f"{content_id}.wav").write_bytes(data)
        code, out, err = dlq("replay", *where, "--json")
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["replayed"] == 4
        assert running.wait_for(lambda: running.worker.pipeline.stats.verdicts >= 4, 120)

        # 4. replaying the same dead letters again (all 8, from the beginning): no new scoring
        code, out, err = dlq("replay", *where, "--from-beginning", "--json")
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["replayed"] == 8
        assert running.wait_for(lambda: running.worker.pipeline.stats.duplicates >= 8, 120)
        stats = running.worker.pipeline.stats
        assert stats.verdicts == 4, vars(stats)

    distinct: dict[str, set[str]] = {}
    for _key, value, _headers in read_destination(settings, tenant, "verdicts"):
        verdict = json.loads(value)
        distinct.setdefault(verdict["idempotency_key"], set()).add(
            json.dumps({k: verdict[k] for k in ("label", "score", "model")}, sort_keys=True)
        )
    assert set(distinct) == {f"{tenant}:{c}" for c in clips}
    assert all(len(v) == 1 for v in distinct.values()), distinct


# -- Pub/Sub (the emulator) and Kinesis (moto_server) ----------------------------------------


@pytest.fixture(scope="module")
def pubsub_emulator():  # type: ignore[no-untyped-def]
    from services.local.emulators import PubSubEmulator

    with PubSubEmulator() as running:
        yield running


@pytest.fixture(scope="module")
def moto():  # type: ignore[no-untyped-def]
    from services.local.emulators import MotoServer

    with MotoServer() as running:
        yield running


CLOUD_SPECS = [
    Spec("poison", "missing_object", "m-1"),
    Spec("poison", "missing_object", "m-2"),
    Spec("poison", "undecodable_audio", "d-1"),
    Spec("retryable", "s3_unavailable", "s-1", attempt=4),
]


def _cloud_round_trip(settings, tenant: str, read_arrivals) -> None:  # type: ignore[no-untyped-def]
    """list / dry run / filtered replay / what is left, the same on every transport."""
    where = ("--tenant", tenant, "--transport", settings.transport)
    code, out, err = dlq("list", *where, "--json")
    assert code == 0, err
    assert {line["content_id"] for line in json_lines(out)} == {"m-1", "m-2", "d-1", "s-1"}

    code, out, err = dlq("replay", *where, "--reason", "missing_object", "--dry-run")
    assert code == 0 and out.count("would replay:") == 2, err
    code, out, err = dlq("stats", *where, "--json")
    assert json.loads(out)["total"] == 4  # the dry run and the listing removed nothing

    code, out, err = dlq("replay", *where, "--reason", "missing_object", "--operator", "ops", "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["replayed"] == summary["removed"] == 2
    replayed = read_arrivals()
    assert sorted(json.loads(value)["content_id"] for value, _headers in replayed) == ["m-1", "m-2"]
    code, out, err = dlq("list", *where, "--json")
    assert {line["content_id"] for line in json_lines(out)} == {"d-1", "s-1"}
    return None


def test_pubsub_dead_letter_subscription(  # type: ignore[no-untyped-def]
    pubsub_emulator, audio_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from consumers.transports.pubsub import read_subscription
    from consumers.transports.registry import provision
    from services.settings import Settings

    tenant = f"p-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AUDIOGUARD_PUBSUB__EMULATOR_HOST", pubsub_emulator.host_port)
    settings = Settings(
        transport="pubsub", tenants=[tenant], pubsub={"emulator_host": pubsub_emulator.host_port}
    )
    provision(settings, [tenant])
    write_dead_letters(settings, tenant, CLOUD_SPECS, f"file://{audio_root}")

    def arrivals() -> list[tuple[bytes, dict[str, bytes]]]:
        got = read_subscription(settings, f"arrivals-{tenant}-workers", idle=3.0, timeout=20)
        return [(value, dict(headers)) for _key, value, headers in got]

    _cloud_round_trip(settings, tenant, arrivals)


def test_pubsub_replay_carries_provenance_attributes(  # type: ignore[no-untyped-def]
    pubsub_emulator, audio_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from consumers.transports.pubsub import read_subscription
    from consumers.transports.registry import provision
    from services.settings import Settings

    tenant = f"p-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AUDIOGUARD_PUBSUB__EMULATOR_HOST", pubsub_emulator.host_port)
    settings = Settings(
        transport="pubsub", tenants=[tenant], pubsub={"emulator_host": pubsub_emulator.host_port}
    )
    provision(settings, [tenant])
    write_dead_letters(settings, tenant, CLOUD_SPECS[:1], f"file://{audio_root}")
    code, out, err = dlq("replay", "--tenant", tenant, "--transport", "pubsub", "--operator", "ops", "--json")
    assert code == 0, err
    replay_id = json.loads(out.splitlines()[-1])["replay_id"]
    got = list(read_subscription(settings, f"arrivals-{tenant}-workers", idle=3.0, timeout=20))
    assert len(got) == 1
    attributes = dict(got[0][2])
    assert attributes["ag-replay-count"] == b"1" and attributes["ag-replay-id"] == replay_id.encode()
    assert attributes["ag-replay-operator"] == b"ops"
    assert json.loads(attributes["ag-replay-origin"])["source"]["topic"] == f"audioguard.arrivals.{tenant}"
    assert not any(name.startswith("ag-dlq-") for name in attributes)
    code, _, err = dlq("replay", "--tenant", tenant, "--transport", "pubsub", "--to", "retry-tier")
    assert code == 3 and "only on Kafka" in err


def test_kinesis_dead_letter_stream(  # type: ignore[no-untyped-def]
    moto, audio_root: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from consumers.transports.kinesis import read_stream
    from consumers.transports.registry import provision
    from services.settings import Settings

    tenant = f"k-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AUDIOGUARD_KINESIS__ENDPOINT_URL", moto.endpoint_url)
    monkeypatch.setenv("AUDIOGUARD_STORE__URL", redis_url)  # the tool's checkpoints outlive one command
    settings = Settings(
        transport="kinesis",
        tenants=[tenant],
        kinesis={"endpoint_url": moto.endpoint_url, "poll_interval_seconds": 0.05},
        store={"url": redis_url},
    )
    provision(settings, [tenant])
    write_dead_letters(settings, tenant, CLOUD_SPECS, f"file://{audio_root}")

    def arrivals() -> list[tuple[bytes, dict[str, bytes]]]:
        stream = f"audioguard-arrivals-{tenant}"
        return [(value, {}) for _key, value, _h in read_stream(settings, stream, idle=1.0, timeout=20)]

    _cloud_round_trip(settings, tenant, arrivals)


def test_ctrl_c_keeps_the_rest_in_the_queue_and_still_audits(  # type: ignore[no-untyped-def]
    broker: EmbeddedBroker, tenants: list[str], audio_root: Path, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    settings = make_settings(broker.bootstrap_servers, tenants[:1], audio_root)
    provision(settings, partitions=1)
    tenant = tenants[0]
    write_dead_letters(
        settings, tenant, [Spec("poison", "missing_object", f"i-{i}") for i in range(30)], "file:///x"
    )
    audit = tmp_path / "audit.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dlq", "replay", "--tenant", tenant, "--rate", "1/s", "--json"]
        + ["--bootstrap-servers", broker.bootstrap_servers, "--audit-log", str(audit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while _count(settings, kafka_topic("arrivals", tenant)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    line = json.loads(audit.read_text().splitlines()[-1])
    assert line["summary"]["interrupted"] is True
    removed = line["summary"]["removed"]
    assert 3 <= removed < 30
    assert _count(settings, kafka_topic("arrivals", tenant)) == removed
    code, listed, _ = dlq(
        "list", "--tenant", tenant, "--bootstrap-servers", broker.bootstrap_servers, "--json"
    )
    assert len(json_lines(listed)) == 30 - removed


def test_kinesis_loop_guard_counts_in_the_store(  # type: ignore[no-untyped-def]
    moto, audio_root: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kinesis records carry no headers: the tool keeps each key's replay count in the store,
    so an arrival that failed again after a replay is refused at --max-replays 1."""
    import uuid

    from consumers.transports.registry import provision
    from services.settings import Settings

    tenant = f"k-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AUDIOGUARD_KINESIS__ENDPOINT_URL", moto.endpoint_url)
    monkeypatch.setenv("AUDIOGUARD_STORE__URL", redis_url)
    settings = Settings(
        transport="kinesis",
        tenants=[tenant],
        kinesis={"endpoint_url": moto.endpoint_url, "poll_interval_seconds": 0.05},
        store={"url": redis_url},
    )
    provision(settings, [tenant])
    where = ("--tenant", tenant, "--transport", "kinesis")
    write_dead_letters(settings, tenant, [Spec("poison", "missing_object", "again")], f"file://{audio_root}")
    code, out, err = dlq("replay", *where, "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["replayed"] == 1, err
    # the replayed arrival failed again: a new dead letter for the same key, count 0 in its body
    write_dead_letters(settings, tenant, [Spec("poison", "missing_object", "again")], f"file://{audio_root}")
    code, out, err = dlq("replay", *where, "--max-replays", "1", "--json")
    summary = json.loads(out.splitlines()[-1])
    assert code == 0 and summary["refused_loop"] == 1 and summary["replayed"] == 0, err
    code, out, err = dlq("replay", *where, "--max-replays", "2", "--json")
    assert json.loads(out.splitlines()[-1])["replayed"] == 1
