"""A dead letter always fits, on the real broker: an event that Kafka's broker accepts but the
worker's producer (message.max.bytes 1,000,000) could never publish as a dead letter with its
payload. The worker stays up, the dead letter lands with the payload in the tenant's
dead-letter area, and `audioguard dlq replay` republishes the exact bytes.

Tansu enforces no record size of its own (a 60 MB record goes through), so the limit that
bites here is the worker's producer, as on a default Apache Kafka with a producer raised to
the broker's 1,048,588 bytes."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.tenancy import kafka_topic
from consumers.transport import Message, OutRecord
from consumers.transports.kafka import KafkaSink, committed_offsets, read_topic
from dlq.envelope import build_dead_letter, dead_letter_from_record, fit_dead_letter, record_bytes
from services.cli import main
from services.errors import PoisonMessage
from services.local.broker import EmbeddedBroker
from services.platform import arrival_for
from services.settings import DlqSettings, Settings
from tests.integration.test_circuit_breaker import worker_env
from tests.support.dead_letters import dlq, json_lines
from tests.support.pipeline import RunningWorker, make_settings, provision, publish_clips, publish_raw

pytestmark = pytest.mark.timeout(300)

SIZES = (1_039_998, 5 * 1024 * 1024)
#: what the test's own producer (the platform side) may send: above every event here
BIG_PRODUCER = {"message.max.bytes": "10000000"}


def arrival_of(tenant: str, content_id: str, size: int, audio_root: Path) -> bytes:
    """A well-formed arrival of exactly `size` bytes (a huge attribute, as a buggy platform sends)."""
    uri = f"file://{audio_root / tenant / content_id}.wav"
    document = json.loads(arrival_for(tenant, uri, b"x", key=f"{tenant}:{content_id}", content_id=content_id))
    document["attributes"] = {"pad": ""}
    document["attributes"]["pad"] = "p" * (size - len(json.dumps(document).encode()))
    raw = json.dumps(document).encode()
    assert len(raw) == size
    return raw


def big_sink(settings: Settings) -> KafkaSink:
    return KafkaSink(settings.kafka.model_copy(update={"extra": BIG_PRODUCER}))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_oversize_events_are_dead_lettered_with_their_payload_stored_and_replay_exactly(
    broker: EmbeddedBroker,
    tenants: list[str],
    audio_root: Path,
    tmp_path: Path,
    detector,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = tenants[0]
    area = f"file://{tmp_path}/dead-letters/{{tenant}}"
    settings = make_settings(
        broker.bootstrap_servers,
        [tenant],
        audio_root,
        dlq=DlqSettings(payload_uri=area, max_invalid_ratio=1.0, max_consecutive=1000),
    )
    provision(settings, partitions=1)
    events = {f"big-{size}": arrival_of(tenant, f"big-{size}", size, audio_root) for size in SIZES}
    digests = {hashlib.sha256(raw).hexdigest() for raw in events.values()}
    publish_raw(
        big_sink(settings),
        [
            OutRecord(tenant=tenant, destination="arrivals", key=f"{tenant}:{cid}".encode(), value=raw)
            for cid, raw in events.items()
        ],
    )
    publish_clips(settings, tenant, audio_root, 1, seconds=1.0)  # behind them: is the worker still up?

    with RunningWorker(settings, detector) as running:
        assert running.wait_for(lambda: running.worker.pipeline.stats.verdicts >= 1, 120)
        stats = running.worker.pipeline.stats
        assert stats.dead_letters == 2 and stats.acked == 3, vars(stats)
    assert running.error is None

    letters = list(read_topic(settings.kafka, kafka_topic("dlq", tenant), idle=1.0))
    assert len(letters) == 2
    for key, value, headers in letters:
        envelope, carried = dead_letter_from_record(value, headers)
        assert envelope.reason == "oversize_event" and envelope.category == "poison"
        assert envelope.payload_truncated is True and envelope.schema_version == "1.1"
        assert envelope.payload_sha256 in digests and envelope.payload_size in SIZES
        assert envelope.payload_uri == f"file://{tmp_path}/dead-letters/{tenant}/{envelope.payload_sha256}"
        stored = Path(envelope.payload_uri.removeprefix("file://")).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == envelope.payload_sha256
        assert stored.startswith(carried) and len(carried) == 4096
        size = record_bytes(
            OutRecord(tenant=tenant, destination="dlq", key=key, value=value, headers=headers)
        )
        assert size < 1_000_000

    # `verdicts --dlq` says why, how often and where the payload is
    where = ("--tenant", tenant, "--bootstrap-servers", broker.bootstrap_servers)
    code, out, err = cli("verdicts", "--dlq", *where)
    assert code == 0, err
    rows = [line for line in out.splitlines() if "oversize_event" in line]
    assert len(rows) == 2 and all("poison" in row and "B, stored" in row for row in rows), out
    assert "category" in out.splitlines()[0] and "attempt" in out.splitlines()[0]
    code, out, err = cli("verdicts", "--dlq", "--json", *where)
    shown = json_lines(out)
    assert {(line["category"], line["reason"], line["attempt"]) for line in shown} == {
        ("poison", "oversize_event", 1)
    }
    assert {line["payload_size"] for line in shown} == set(SIZES)
    assert all(line["payload_truncated"] and line["payload_uri"] for line in shown)

    ref = json_lines(dlq("list", *where, "--json")[1])[0]["ref"]
    code, out, err = dlq("show", *where, ref)
    text = " ".join(out.split())  # rich folds long lines
    assert code == 0 and "of 1039998 bytes are in the record; the full payload is at file://" in text, out

    # replay fetches the stored payload, checks its sha256 and republishes the exact bytes
    monkeypatch.setenv("AUDIOGUARD_DLQ__PAYLOAD_URI", area)
    monkeypatch.setenv("AUDIOGUARD_KAFKA__EXTRA", json.dumps(BIG_PRODUCER))
    code, out, err = dlq("replay", *where, "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["replayed"] == summary["removed"] == 2, summary
    replayed = [
        value
        for _key, value, headers in read_topic(settings.kafka, kafka_topic("arrivals", tenant), idle=1.0)
        if any(name == "ag-replay-count" for name, _ in headers)
    ]
    assert sorted(hashlib.sha256(value).hexdigest() for value in replayed) == sorted(digests)


def test_a_truncated_dead_letter_whose_payload_was_not_stored_is_refused_for_replay(
    broker: EmbeddedBroker, tenants: list[str], audio_root: Path
) -> None:
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    raw = arrival_of(tenant, "cut", 1_039_998, audio_root)
    message = Message(
        token=(kafka_topic("arrivals", tenant), 0, 0),
        tenant=tenant,
        topic=kafka_topic("arrivals", tenant),
        value=raw,
        key=f"{tenant}:cut".encode(),
        coordinates={"partition": 0, "offset": 0},
    )
    try:
        raise PoisonMessage("oversize_event", "event of 1039998 bytes exceeds 65536")
    except PoisonMessage as error:
        envelope = build_dead_letter(
            message,
            error,
            attempt=1,
            first_seen_at=datetime.now(UTC),
            worker_id="w",
            model_version="m",
            transport="kafka",
        )
    # no dead-letter area configured: only the prefix exists
    publish_raw(KafkaSink(settings.kafka), [fit_dead_letter(message, envelope, max_record_bytes=1_000_000)])

    where = ("--tenant", tenant, "--bootstrap-servers", broker.bootstrap_servers)
    code, out, err = dlq("replay", *where, "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["refused_truncated"] == 1 and summary["replayed"] == 0 and summary["removed"] == 0
    assert "refused (truncated)" in err and "could not be stored" in err
    assert not list(read_topic(settings.kafka, kafka_topic("arrivals", tenant), idle=1.0))
    listed = json_lines(dlq("list", *where, "--json")[1])
    assert len(listed) == 1 and listed[0]["payload_truncated"] is True
    code, out, _ = dlq("show", *where, listed[0]["ref"])
    assert code == 0 and "could not be stored" in " ".join(out.split())


def test_a_dead_letter_that_can_never_be_published_stops_the_worker_with_exit_3(
    broker: EmbeddedBroker, tenants: list[str], audio_root: Path
) -> None:
    """The envelope alone is over the producer's limit (an arrival with 2 KB of headers, a
    producer at librdkafka's minimum): retried with backoff, then exit 3 and a line that says
    what could not be published, never a silent loop, and the arrival is not acked."""
    tenant = tenants[0]
    settings = make_settings(broker.bootstrap_servers, [tenant], audio_root)
    provision(settings, partitions=1)
    publish_raw(
        KafkaSink(settings.kafka),
        [
            OutRecord(
                tenant=tenant,
                destination="arrivals",
                key=b"k",
                value=b'{"broken": ',
                headers=(("trace", b"t" * 2000),),
            )
        ],
    )
    env = worker_env(settings, audio_root, AUDIOGUARD_KAFKA__EXTRA=json.dumps({"message.max.bytes": "1000"}))
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert "publish_failed" in done.stderr and "could not publish the dead letter" in done.stderr
    assert "Message size too large" in done.stderr
    assert "publish failed; retrying" in done.stderr  # with backoff first
    committed = committed_offsets(settings.kafka, [kafka_topic("arrivals", tenant)])
    assert all(offset <= 0 for offset in committed.values())
