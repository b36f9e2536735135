"""The hostile-event corpus in tests/fuzz/events/: load it, render one kind into the bytes a
platform would publish, and run every kind through a real worker on the in-memory transport
(`scripts/hostile_table.py`; the Kafka run is tests/integration/test_poison_corpus.py).

An event file is the payload as bytes, with placeholders the renderer fills in for the
tenant, key and files of one run (tests/fuzz/events/README.md lists them). A kind with
`prime = true` is published after a healthy event with the same idempotency key, so it
tests what a repeated key gets.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "events"
#: what `expect` may say besides a dead-letter reason
ANSWERS = ("verdict", "duplicate")
#: the limits the corpus is written against (the Kafka test and the table use the same)
LIMITS = {"max_event_bytes": 65_536, "max_audio_seconds": 5.0, "min_audio_seconds": 0.1}
MAX_BYTES = 600_000


@dataclass(frozen=True)
class CorpusKind:
    file: str
    name: str
    expect: str  # "verdict", "duplicate" or the dead letter's reason
    audio: str = "audio/ok-1s.flac"
    prime: bool = False
    encoding: str | None = None


def load_corpus(directory: Path = CORPUS) -> list[CorpusKind]:
    manifest = tomllib.loads((directory / "manifest.toml").read_text())
    kinds = [CorpusKind(**entry) for entry in manifest["kind"]]
    files = {p.name for p in directory.iterdir() if p.is_file()} - {"manifest.toml", "README.md"}
    listed = {k.file for k in kinds}
    if files != listed:
        raise ValueError(f"corpus files and manifest differ: {sorted(files ^ listed)}")
    return kinds


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mixed(hexdigest: str) -> str:
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(hexdigest))


def render(
    kind: CorpusKind, tenant: str, key: str, root: Path, other: Path, directory: Path = CORPUS
) -> tuple[bytes | None, bytes]:
    """(the priming event or None, the kind's event) for one run; stores the audio under `root`."""
    content = key.split(":")[-1]
    audio = (directory / kind.audio).read_bytes()
    name = f"{content}{Path(kind.audio).suffix}"
    (root / name).write_bytes(audio)
    other_audio = (directory / "audio" / "other-1s.flac").read_bytes()
    other_name = f"{content}-other.flac"
    (root / other_name).write_bytes(other_audio)
    link = root / f"{content}-link.wav"
    if not link.is_symlink():
        link.symlink_to(other / "clip.wav")
    now = datetime.now(UTC)
    values = {
        "@EVENT_ID@": str(uuid.uuid4()),
        "@KEY@": key,
        "@TENANT@": tenant,
        "@TENANT_UPPER@": tenant.upper(),
        "@CONTENT@": content,
        "@URI@": f"file://{root}/{name}",
        "@FILE@": name,
        "@ROOT@": str(root),
        "@OTHER@": str(other),
        "@LINK@": str(link),
        "@SHA256@": _sha(audio),
        "@SHA256_UPPER@": _sha(audio).upper(),
        "@SIZE@": str(len(audio)),
        "@SIZE_PLUS_ONE@": str(len(audio) + 1),
        "@OTHER_URI@": f"file://{root}/{other_name}",
        "@OTHER_SHA256@": _sha(other_audio),
        "@OTHER_SHA256_MIXED@": _mixed(_sha(other_audio)),
        "@OTHER_SIZE@": str(len(other_audio)),
        "@NOW@": now.isoformat(),
        "@NOW_PLUS_1H@": (now + timedelta(hours=1)).isoformat(),
    }
    event = (directory / kind.file).read_bytes()
    for placeholder in sorted(values, key=len, reverse=True):  # @SIZE_PLUS_ONE@ before @SIZE@
        event = event.replace(placeholder.encode(), values[placeholder].encode())
    if kind.encoding is not None:
        event = event.decode().encode(kind.encoding)
    primer = None
    if kind.prime:
        from services.platform import arrival_for

        primer = arrival_for(tenant, values["@URI@"], audio, key=key, content_id=content)
    return primer, event


def copy_other_clip(other: Path) -> None:
    """The other tenant's file that hostile URIs reach for."""
    other.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CORPUS / "audio" / "other-1s.flac", other / "clip.wav")


@dataclass(frozen=True)
class Row:
    kind: CorpusKind
    size: int
    outcome: str
    worker_up: bool
    #: the dead letter's error_message ("" for an answer)
    message: str = ""

    @property
    def stable_message(self) -> bool:
        """No object address or temporary path: the same failure reads the same every time."""
        return " at 0x" not in self.message and "BytesIO" not in self.message

    @property
    def ok(self) -> bool:
        return self.outcome == self.kind.expect and self.worker_up and self.stable_message


def run_in_memory(
    kinds: list[CorpusKind], workdir: Path, progress: Callable[[Row], None] | None = None
) -> list[Row]:
    """Every kind through one real worker (memory transport, null scorer), one at a time.

    After each kind a healthy arrival must get its verdict and the worker must not have
    stopped: that is the "worker still up" column.
    """
    from consumers.tenancy import kafka_topic
    from consumers.transports.memory import MemoryBroker, forget_broker, register_broker
    from dlq.envelope import dead_letter_from_record
    from services.detector.null import load_null_scorer
    from services.platform import arrival_for
    from tests.support.memory import build_memory_worker, memory_settings, records

    tenant, other_tenant = "acme", "globex"
    root, other = workdir / tenant, workdir / other_tenant
    root.mkdir(parents=True, exist_ok=True)
    copy_other_clip(other)
    broker_name = f"hostile-{uuid.uuid4().hex[:8]}"
    broker = register_broker(broker_name, MemoryBroker())
    for destination in ("arrivals", "verdicts", "dlq"):
        broker.create_topic(kafka_topic(destination, tenant))
    settings = memory_settings(
        broker_name,
        [tenant],
        workdir,
        storage={
            "tenant_file_roots": {tenant: [str(root)], other_tenant: [str(other)]},
            "tenant_s3_locations": {tenant: ["audio-ours"]},
            "max_bytes": MAX_BYTES,
        },
        limits=LIMITS,
        dlq={"max_invalid_ratio": 1.0, "max_consecutive": 10_000},
    )
    worker = build_memory_worker(settings, broker, load_null_scorer())
    stats = worker.pipeline.stats
    sentinel = (CORPUS / "audio" / "ok-1s.flac").read_bytes()
    (root / "sentinel.flac").write_bytes(sentinel)

    down: list[BaseException] = []  # what escaped the worker's loop: it would have exited

    def publish_and_finish(value: bytes, key: bytes) -> bool:
        target = stats.acked + 1
        broker.produce(kafka_topic("arrivals", tenant), value, key=key)
        deadline = time.monotonic() + 30
        while stats.acked < target:
            if time.monotonic() > deadline or down:
                return False
            try:
                worker.turn()
            except Exception as error:  # noqa: BLE001 - recorded: the table's "worker still up"
                down.append(error)
        return True

    rows: list[Row] = []
    try:
        for i, kind in enumerate(kinds):
            key = f"{tenant}:h{i:03d}"
            primer, event = render(kind, tenant, key, root, other)
            if primer is not None:
                publish_and_finish(primer, key.encode())
            before = (stats.verdicts, stats.duplicates, stats.dead_letters)
            dlq_before = len(records(broker, "dlq", tenant))
            finished = publish_and_finish(event, key.encode())
            outcome, message = "unfinished", ""
            if finished:
                if stats.dead_letters > before[2]:
                    value, headers = records(broker, "dlq", tenant)[dlq_before][1:]
                    envelope = dead_letter_from_record(value, headers)[0]
                    outcome, message = envelope.reason, envelope.error_message
                elif stats.duplicates > before[1]:
                    outcome = "duplicate"
                elif stats.verdicts > before[0]:
                    outcome = "verdict"
            # the stream keeps flowing: a healthy arrival right after gets its verdict
            healthy = f"{tenant}:ok{i:03d}"
            verdicts = stats.verdicts
            up = publish_and_finish(
                arrival_for(
                    tenant, f"file://{root}/sentinel.flac", sentinel, key=healthy, content_id=healthy
                ),
                healthy.encode(),
            )
            row = Row(kind, len(event), outcome, up and stats.verdicts == verdicts + 1 and not down, message)
            rows.append(row)
            if progress is not None:
                progress(row)
    finally:
        worker.shutdown()
        forget_broker(broker_name)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| # | kind | bytes | expected | outcome | worker still up |",
        "|---|---|---:|---|---|---|",
    ]
    for i, row in enumerate(rows, start=1):
        outcome = row.outcome if row.outcome in ANSWERS else f"dead letter `{row.outcome}`"
        mark = "" if row.outcome == row.kind.expect else " **MISMATCH**"
        mark += "" if row.stable_message else " **ADDRESS IN MESSAGE**"
        name = row.kind.name.replace("|", "\\|")
        lines.append(
            f"| {i} | {name} | {row.size:,} | {row.kind.expect} | {outcome}{mark} | "
            f"{'yes' if row.worker_up else '**NO**'} |"
        )
    return "\n".join(lines)
