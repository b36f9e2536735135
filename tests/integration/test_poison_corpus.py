"""The poison corpus: every kind of bad input ends in the tenant's DLQ with the expected
category and reason, while the healthy arrivals of the same stream (odd rates and channel
counts included) all get verdicts. Real broker, real worker, real files.

The kinds are this module's KINDS (built in code) and the file corpus tests/fuzz/events/
(tests.support.corpus; `scripts/hostile_table.py` prints its table from an in-memory
worker). Run with -s to see the table (kind -> category, reason).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from consumers.transport import OutRecord
from consumers.transports.kafka import KafkaSink
from dlq.envelope import dead_letter_from_record
from services.platform import arrival_for
from services.settings import DlqSettings, LimitsSettings, StorageSettings
from tests.support.audio import BAD_UPLOADS, encode, flac_claiming, speechlike
from tests.support.corpus import ANSWERS, LIMITS, MAX_BYTES, load_corpus, render
from tests.support.pipeline import (
    RunningWorker,
    make_settings,
    provision,
    publish_raw,
    read_destination,
    verdicts_by_key,
)


@dataclass(frozen=True)
class Kind:
    name: str
    reason: str | None  # None: healthy, must get a verdict
    build: Callable[[str, str, Path, Path], bytes]  # (tenant, key, own root, other root) -> event bytes
    category: str = "poison"


def _event(tenant: str, key: str, uri: str, data: bytes | None = None, **changes: object) -> bytes:
    document = json.loads(arrival_for(tenant, uri, data or b"", key=key, content_id=key.split(":")[-1]))
    if data is None:
        document.pop("sha256")
        document.pop("byte_size")
    for name, value in changes.items():
        if value is _DROP:
            document.pop(name, None)
        else:
            document[name] = value
    return json.dumps(document).encode()


_DROP = object()


def _file(root: Path, key: str, data: bytes, suffix: str = ".wav") -> tuple[str, bytes]:
    path = root / (key.split(":")[-1] + suffix)
    path.write_bytes(data)
    return f"file://{path}", data


def _stored(data: bytes, suffix: str = ".wav", **changes: object) -> Callable[[str, str, Path, Path], bytes]:
    def build(tenant: str, key: str, root: Path, _other: Path) -> bytes:
        uri, raw = _file(root, key, data, suffix)
        return _event(tenant, key, uri, raw, **changes)

    return build


def _raw(payload: bytes) -> Callable[[str, str, Path, Path], bytes]:
    return lambda tenant, key, root, other: payload


def _changed(**changes: object) -> Callable[[str, str, Path, Path], bytes]:
    clip = encode(speechlike(1.0, seed=9))

    def build(tenant: str, key: str, root: Path, _other: Path) -> bytes:
        uri, raw = _file(root, key, clip)
        return _event(tenant, key, uri, raw, **changes)

    return build


def _uri(make: Callable[[Path, Path], str]) -> Callable[[str, str, Path, Path], bytes]:
    return lambda tenant, key, root, other: _event(tenant, key, make(root, other))


def _wav_float(samples: np.ndarray, rate: int = 16000) -> bytes:
    return encode(samples.astype(np.float32), rate, subtype="FLOAT")


def _nan() -> bytes:
    samples = speechlike(1.0)
    samples[100:200] = np.nan
    return _wav_float(samples)


def _inf() -> bytes:
    samples = speechlike(1.0)
    samples[5] = np.inf
    return _wav_float(samples)


def _wav_header_only() -> bytes:
    data = encode(speechlike(1.0))
    return data[:44]


def _corrupt_header() -> bytes:
    data = bytearray(encode(speechlike(1.0)))
    data[8:16] = b"JUNKJUNK"  # "WAVEfmt " gone
    return bytes(data)


CLIP = encode(speechlike(1.0, seed=1))


def _spliced(raw_field: bytes) -> Callable[[str, str, Path, Path], bytes]:
    """A valid event with `raw_field` (JSON text too deep for json.dumps) as an extra field."""
    valid = _changed()

    def build(tenant: str, key: str, root: Path, other: Path) -> bytes:
        return valid(tenant, key, root, other).replace(b"{", b'{"deep": ' + raw_field + b", ", 1)

    return build


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth

KINDS: list[Kind] = [
    # -- the event itself
    Kind("malformed JSON", "malformed_json", _raw(b'{"event_id": "e1", "tenant_id": ')),
    Kind("empty payload", "malformed_json", _raw(b"")),
    Kind("not UTF-8", "malformed_json", _raw(b"\xff\xfe\x00garbage")),
    Kind("JSON array, not object", "schema", _raw(b"[1, 2, 3]")),
    Kind("JSON string", "schema", _raw(b'"hello"')),
    Kind("wrong type: priority", "schema", _changed(priority="urgent")),
    Kind("wrong type: idempotency_key", "schema", _changed(idempotency_key=12345)),
    Kind("missing audio_uri", "schema", _changed(audio_uri=_DROP)),
    Kind("missing idempotency_key", "schema", _changed(idempotency_key=_DROP)),
    Kind("missing submitted_at", "schema", _changed(submitted_at=_DROP)),
    Kind("naive submitted_at", "schema", _changed(submitted_at=datetime(2026, 1, 1).isoformat())),
    Kind("priority out of range", "schema", _changed(priority=42)),
    Kind("malformed sha256", "schema", _changed(sha256="abc")),
    Kind("unknown major schema version", "unknown_schema_version", _changed(schema_version="2.0")),
    Kind("garbled schema_version", "schema", _changed(schema_version="one")),
    Kind("invalid tenant id", "schema", _changed(tenant_id="ACME Corp!")),
    Kind("oversize event", "oversize_event", _changed(attributes={"pad": "x" * 70_000})),
    Kind("tenant mismatch", "tenant_mismatch", _changed(tenant_id="someone-else")),
    # issue 15's crashers: a RecursionError out of json.loads used to stop the worker for good
    Kind("1,000-deep nesting in an extra field", "too_deep", _spliced(_deep(1_000))),
    Kind("20,000-deep nesting (40 KB)", "too_deep", _spliced(_deep(20_000))),
    Kind("33-deep nesting, one past the limit", "too_deep", _spliced(_deep(33))),
    Kind("huge integer literal", "malformed_json", _raw(b'{"priority": ' + b"9" * 5000 + b"}")),
    # -- where the audio is
    Kind("unknown URI scheme", "unsupported_scheme", _uri(lambda r, o: "ftp://example.org/a.wav")),
    Kind("http URI", "unsupported_scheme", _uri(lambda r, o: "https://example.org/a.wav")),
    Kind("gs:// not configured", "unsupported_scheme", _uri(lambda r, o: "gs://bucket/a.wav")),
    Kind("path traversal", "path_traversal", _uri(lambda r, o: f"file://{r}/../../etc/passwd")),
    Kind("NUL in path", "path_traversal", _uri(lambda r, o: f"file://{r}/a%00.wav")),
    Kind("outside the roots", "uri_outside_roots", _uri(lambda r, o: "file:///etc/hostname")),
    Kind("another tenant's root", "uri_outside_roots", _uri(lambda r, o: f"file://{o}/clip.wav")),
    Kind("remote host", "uri_outside_roots", _uri(lambda r, o: "file://evil.example.org/a.wav")),
    Kind("bucket not allowed", "uri_outside_roots", _uri(lambda r, o: "s3://not-ours/a.wav")),
    Kind("missing object", "missing_object", _uri(lambda r, o: f"file://{r}/never-written.wav")),
    Kind("a directory", "missing_object", _uri(lambda r, o: f"file://{r}")),
    Kind("sha256 mismatch", "sha256_mismatch", _stored(CLIP, sha256=hashlib.sha256(b"other").hexdigest())),
    Kind("oversize object", "oversize", _stored(b"\0" * 700_000)),
    # -- what the audio is
    Kind("zero-byte file", "empty_audio", _stored(b"")),
    Kind("WAV header only", "undecodable_audio", _stored(_wav_header_only())),
    Kind("truncated header", "undecodable_audio", _stored(CLIP[:30])),
    Kind("corrupt header", "undecodable_audio", _stored(_corrupt_header())),
    Kind(
        "text with .mp3 extension", "undecodable_audio", _stored(b"this is not audio at all\n" * 40, ".mp3")
    ),
    Kind(
        "PNG with .wav extension", "undecodable_audio", _stored(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    ),
    Kind("past the duration limit", "too_long", _stored(encode(speechlike(7.0)))),
    # refused on the header's word: the body is cut, so decoding would have found it corrupt
    Kind("header claims 3 hours", "too_long", _stored(flac_claiming(3 * 3600), ".flac")),
    Kind("too short", "too_short", _stored(encode(speechlike(0.04)))),
    Kind("10 ms", "too_short", _stored(encode(speechlike(0.01)))),
    Kind("all silence", "silent_audio", _stored(encode(np.zeros(16000, dtype=np.float32)))),
    Kind("3 s digital silence, FLAC", "silent_audio", _stored(BAD_UPLOADS["silence-3s.flac"][1], ".flac")),
    Kind("NaN samples", "non_finite_samples", _stored(_nan())),
    Kind("Inf samples", "non_finite_samples", _stored(_inf())),
    Kind("samples of 1e20", "out_of_range_samples", _stored(_wav_float(speechlike(1.0) * np.float32(1e20)))),
    Kind("4 kHz sample rate", "unsupported_sample_rate", _stored(encode(speechlike(1.0, rate=4000), 4000))),
    Kind("nine channels", "unsupported_channels", _stored(encode(speechlike(1.0, channels=9)))),
    # -- healthy edge cases in the same stream: each must get a verdict
    Kind("8 kHz", None, _stored(encode(speechlike(1.0, rate=8000), 8000))),
    Kind("22.05 kHz", None, _stored(encode(speechlike(1.0, rate=22050), 22050))),
    Kind("44.1 kHz", None, _stored(encode(speechlike(1.0, rate=44100), 44100))),
    Kind("48 kHz", None, _stored(encode(speechlike(1.0, rate=48000), 48000))),
    Kind("96 kHz", None, _stored(encode(speechlike(1.0, rate=96000), 96000))),
    Kind("six channels", None, _stored(encode(speechlike(1.0, channels=6)))),
    Kind("stereo FLAC", None, _stored(encode(speechlike(1.0, channels=2), fmt="FLAC"), ".flac")),
    Kind("OGG Vorbis", None, _stored(encode(speechlike(1.0), fmt="OGG", subtype="VORBIS"), ".ogg")),
    Kind("unknown fields ignored", None, _changed(future_field={"a": 1}, schema_version="1.7")),
]


def test_poison_corpus_each_kind_dead_lettered_with_its_reason(broker, detector, tenants, audio_root):
    tenant, other = tenants[0], tenants[1]
    settings = make_settings(
        broker.bootstrap_servers,
        [tenant],
        audio_root,
        storage=StorageSettings(
            tenant_file_roots={tenant: [audio_root / tenant], other: [audio_root / other]},
            tenant_s3_locations={tenant: ["audio-ours"]},
            max_bytes=MAX_BYTES,
        ),
        limits=LimitsSettings(**LIMITS),
        # a corpus that is mostly poison must not trip the breaker: that is another test
        dlq=DlqSettings(max_invalid_ratio=1.0, max_consecutive=10_000),
    )
    provision(settings, partitions=1)
    root, other_root = audio_root / tenant, audio_root / other
    root.mkdir(parents=True, exist_ok=True)
    other_root.mkdir(parents=True, exist_ok=True)
    (other_root / "clip.wav").write_bytes(CLIP)

    records, expected = [], {}
    healthy_keys = []
    for i, kind in enumerate(KINDS):
        key = f"{tenant}:k{i:02d}"
        records.append(
            OutRecord(
                tenant=tenant,
                destination="arrivals",
                key=key.encode(),
                value=kind.build(tenant, key, root, other_root),
            )
        )
        expected[key] = kind
        if kind.reason is None:
            healthy_keys.append(key)
        # a plain healthy arrival after every bad one: the stream keeps flowing around poison
        plain = f"{tenant}:plain{i:02d}"
        uri, raw = _file(root, plain, encode(speechlike(1.0, seed=100 + i)))
        records.append(
            OutRecord(
                tenant=tenant,
                destination="arrivals",
                key=plain.encode(),
                value=_event(tenant, plain, uri, raw),
            )
        )
        healthy_keys.append(plain)
    # the file corpus: a kind with `prime` repeats the key of a healthy event published (and
    # finished) before it, so the hostile one meets a stored verdict
    primers, corpus_records = [], []
    corpus_answers: dict[str, int] = {}  # idempotency key -> verdicts expected on the topic
    for i, item in enumerate(load_corpus()):
        key = f"{tenant}:c{i:02d}"
        primer, event = render(item, tenant, key, root, other_root)
        if primer is not None:
            primers.append(OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=primer))
            corpus_answers[key] = 1
        corpus_records.append(OutRecord(tenant=tenant, destination="arrivals", key=key.encode(), value=event))
        if item.expect in ANSWERS:
            answered = json.loads(event)["idempotency_key"]  # json.loads reads UTF-16 too
            corpus_answers[answered] = corpus_answers.get(answered, 0) + 1
        else:
            expected[key] = Kind(item.name, item.expect, _raw(event))
    sink = KafkaSink(settings.kafka)
    publish_raw(sink, records + primers)
    poison = [k for k, kind in expected.items() if kind.reason is not None]
    assert len({expected[k].name for k in poison}) >= 30

    with RunningWorker(settings, detector) as running:
        first = len(records) + len(primers)
        assert running.wait_for(lambda: running.worker.pipeline.stats.acked >= first, timeout=120), (
            running.worker.pipeline.stats
        )
        publish_raw(sink, corpus_records)
        total = first + len(corpus_records)
        assert running.wait_for(lambda: running.worker.pipeline.stats.acked >= total, timeout=120), (
            running.worker.pipeline.stats
        )
    payload_of = {r.key: r.value for r in records + primers + corpus_records}  # the last one per key

    got: dict[str, tuple[str, str]] = {}
    for key, value, headers in read_destination(settings, tenant, "dlq"):
        envelope, payload = dead_letter_from_record(value, headers)
        got[(key or b"").decode()] = (envelope.category, envelope.reason)
        # the same failure reads the same every time: no object address, no temporary path
        assert " at 0x" not in envelope.error_message and "BytesIO" not in envelope.error_message
        assert payload == payload_of[key]  # the original payload, byte for byte
        assert envelope.source.topic == f"audioguard.arrivals.{tenant}" and envelope.source.offset is not None

    rows = []
    for key in poison:
        kind = expected[key]
        rows.append((kind.name, f"{kind.category}/{kind.reason}", "/".join(got.get(key, ("MISSING", "")))))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'kind'.ljust(width)}  expected -> dead letter (category/reason)")
    for name, want, have in rows:
        print(f"{name.ljust(width)}  {want:38s} {have}{'' if want == have else '   <-- MISMATCH'}")
    assert [r for r in rows if r[1] != r[2]] == []
    assert set(got) == set(poison)  # nothing healthy was dead-lettered

    verdicts = verdicts_by_key(settings, tenant)
    assert set(verdicts) == set(healthy_keys) | set(corpus_answers)
    # a duplicate kind republishes the primer's verdict: two on the topic, one answer
    assert {k: len(v) for k, v in verdicts.items()} == {**dict.fromkeys(healthy_keys, 1), **corpus_answers}
