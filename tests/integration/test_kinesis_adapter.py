"""The Kinesis adapter against a real `moto_server` (started here, on a free port).

Covers: provisioning; checkpoints only across a contiguous acked run, in Redis, and a new
source resuming after them; pause; GetRecords throttling backed off per shard; PutRecords
partial failure re-sending exactly the failed records, and a record that never succeeds
failing its future.

Not covered here: resharding. moto's SplitShard moves the parent's records into the
children (Kinesis keeps them in the closed parent), so the rule "children only after the
parent is finished" cannot be exercised faithfully on moto; it is documented in
consumers/transports/kinesis.py.

moto never answers PutRecords with per-record failures or GetRecords with throttling, so
the fault tests put a small fault-injecting HTTP proxy between boto3 and moto (like
toxiproxy): it forwards every request to the real server and only rewrites the few it is
told to. Every record that reaches a stream is really stored by moto and read back.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest

from consumers.tenancy import kinesis_stream
from consumers.transport import Message, OutRecord
from consumers.transports.kinesis import KinesisSink, KinesisSource, provision_kinesis
from services.errors import FatalError, RetryableError
from services.local.emulators import MotoServer
from services.settings import Settings
from services.store import MemoryStore, open_store


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as running:
        yield running


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def _settings(endpoint: str, tenants: list[str], shards: int = 1) -> Settings:
    return Settings(
        transport="kinesis",
        tenants=tenants,
        kinesis={"endpoint_url": endpoint, "shard_count": shards, "poll_interval_seconds": 0.05},
        retry={"attempts": 4, "initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.4},
    )


def _tenants(n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"k{i}-{run}" for i in range(n)]


def _publish(sink: KinesisSink, tenant: str, values: list[bytes]) -> None:
    futures = [
        sink.publish(
            OutRecord(tenant=tenant, destination="arrivals", key=v, value=v, ordering_key=v.decode())
        )
        for v in values
    ]
    for future in futures:
        future.result(timeout=15)


def _poll_until(source: KinesisSource, count: int, timeout: float = 10.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += source.poll(100, 0.2)
    return got


def _poll_for(source: KinesisSource, seconds: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += source.poll(100, 0.1)
    return got


def _stream_contents(endpoint: str, stream: str) -> list[bytes]:
    """Everything stored in `stream`, read straight from moto (no adapter involved)."""
    client = boto3.client(
        "kinesis",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    out: list[bytes] = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=1000)
            out += [r["Data"] for r in response["Records"]]
            if not response["Records"]:
                break
            iterator = response.get("NextShardIterator")
    return out


# -- the fault-injecting proxy ------------------------------------------------------------


class FaultProxy:
    """Forwards Kinesis JSON requests to moto; may fail chosen PutRecords entries (only the
    others reach moto) and throttle GetRecords."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        #: (call number, index in call, data) -> fail this entry?
        self.fail_entry: Callable[[int, int, bytes], bool] = lambda call, index, data: False
        self.throttle_gets = 0
        self.gets = 0
        self.put_calls: list[list[bytes]] = []
        self.throttled = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "")
                if target.endswith(".GetRecords"):
                    proxy.gets += 1
                if target.endswith(".GetRecords") and proxy.throttle_gets > 0:
                    proxy.throttle_gets -= 1
                    proxy.throttled += 1
                    self._reply(
                        400,
                        {
                            "__type": "ProvisionedThroughputExceededException",
                            "message": "Rate exceeded for shard (injected)",
                        },
                    )
                    return
                if target.endswith(".PutRecords"):
                    self._put_records(body)
                    return
                status, payload = proxy._forward(dict(self.headers), body)
                self._reply_raw(status, payload)

            def _put_records(self, body: bytes) -> None:
                request = json.loads(body)
                entries = request["Records"]
                call = len(proxy.put_calls)
                datas = [base64.b64decode(e["Data"]) for e in entries]
                proxy.put_calls.append(datas)
                failing = {i for i, data in enumerate(datas) if proxy.fail_entry(call, i, data)}
                passing = [e for i, e in enumerate(entries) if i not in failing]
                results: list[dict[str, Any]] = []
                if passing:
                    forwarded = json.dumps({**request, "Records": passing}).encode()
                    headers = dict(self.headers)
                    status, payload = proxy._forward(headers, forwarded)
                    if status != 200:
                        self._reply_raw(status, payload)
                        return
                    results = list(json.loads(payload)["Records"])
                merged = []
                for i in range(len(entries)):
                    if i in failing:
                        merged.append(
                            {
                                "ErrorCode": "ProvisionedThroughputExceededException",
                                "ErrorMessage": "Rate exceeded for shard (injected)",
                            }
                        )
                    else:
                        merged.append(results.pop(0))
                self._reply(200, {"FailedRecordCount": len(failing), "Records": merged})

            def _reply(self, status: int, document: dict[str, Any]) -> None:
                self._reply_raw(status, json.dumps(document).encode())

            def _reply_raw(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _forward(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.upstream, timeout=10)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "host")}
            headers["Content-Length"] = str(len(body))
            connection.request("POST", "/", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    running = FaultProxy(moto.endpoint_url)
    yield running
    running.close()


# -- tests --------------------------------------------------------------------------------


def test_provisioning_is_idempotent_and_creates_three_streams(moto: MotoServer) -> None:
    tenants = _tenants(1)
    settings = _settings(moto.endpoint_url, tenants, shards=2)
    provision_kinesis(settings, tenants)
    provision_kinesis(settings, tenants)
    client = boto3.client(
        "kinesis",
        region_name="us-east-1",
        endpoint_url=moto.endpoint_url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    for kind in ("arrivals", "verdicts", "dlq"):
        summary = client.describe_stream_summary(StreamName=kinesis_stream(kind, tenants[0]))
        assert summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
        assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 2


@pytest.mark.skipif(not _redis_up(), reason="needs the local Redis on 127.0.0.1:6379")
def test_checkpoints_follow_contiguous_acks_and_a_new_source_resumes_after_them(moto: MotoServer) -> None:
    tenants = _tenants(2)
    settings = _settings(moto.endpoint_url, tenants, shards=2)
    provision_kinesis(settings, tenants)
    sink = KinesisSink(settings)
    values = {t: [f"{t}-{i:02d}".encode() for i in range(10)] for t in tenants}
    try:
        for tenant in tenants:
            _publish(sink, tenant, values[tenant])
    finally:
        sink.close(5)
    store = open_store("redis://127.0.0.1:6379/0")
    application = f"test-{uuid.uuid4().hex}"  # keeps this run's checkpoints apart in Redis
    source = KinesisSource(settings, tenants, store, application=application)
    try:
        got = _poll_until(source, 20)
        assert sorted(m.value for m in got) == sorted(values[tenants[0]] + values[tenants[1]])
        assert {m.tenant for m in got if m.value.startswith(tenants[1].encode())} == {tenants[1]}
        # leave one record of one shard unacked: that shard's checkpoint must stop before it
        by_shard: dict[tuple[str, str], list[Message]] = {}
        for message in got:
            by_shard.setdefault((message.topic, str(message.coordinates["shard_id"])), []).append(message)
        shard_key, shard_messages = max(by_shard.items(), key=lambda item: len(item[1]))
        assert len(shard_messages) >= 3
        hole = shard_messages[1]
        source.ack([m.token for m in reversed(got) if m is not hole])  # out of order on purpose
        checkpoints = source.checkpoints()
        assert (
            checkpoints[f"{shard_key[0]}/{shard_key[1]}"] == shard_messages[0].coordinates["sequence_number"]
        )
        for other, messages in by_shard.items():
            if other != shard_key:
                assert checkpoints[f"{other[0]}/{other[1]}"] == messages[-1].coordinates["sequence_number"]
    finally:
        source.close(5)
    restarted = KinesisSource(
        settings, tenants, open_store("redis://127.0.0.1:6379/0"), application=application
    )
    try:
        again = _poll_for(restarted, 1.5)
        # exactly the hole and what follows it in its shard: acked-but-after-the-hole comes back
        assert [m.value for m in again] == [m.value for m in shard_messages[1:]]
        restarted.ack([m.token for m in again])
        assert (
            restarted.checkpoints()[f"{shard_key[0]}/{shard_key[1]}"]
            == (shard_messages[-1].coordinates["sequence_number"])
        )
        assert _poll_for(restarted, 0.5) == []
    finally:
        restarted.close(5)


def test_pause_stops_reading_a_tenant(moto: MotoServer) -> None:
    tenants = _tenants(2)
    paused, running = tenants
    settings = _settings(moto.endpoint_url, tenants)
    provision_kinesis(settings, tenants)
    source = KinesisSource(settings, tenants, MemoryStore())
    sink = KinesisSink(settings)
    try:
        source.pause([paused])
        source.pause([paused])
        assert source.paused() == frozenset({paused})
        _publish(sink, paused, [b"p1", b"p2"])
        _publish(sink, running, [b"r1"])
        during = _poll_for(source, 1.0)
        assert [m.value for m in during] == [b"r1"]
        source.resume([paused])
        after = _poll_until(source, 2)
        assert sorted(m.value for m in after) == [b"p1", b"p2"]
        assert {m.tenant for m in after} == {paused}
    finally:
        sink.close(5)
        source.close(5)


def test_throttled_get_records_backs_off_and_recovers(moto: MotoServer, proxy: FaultProxy) -> None:
    tenants = _tenants(1)
    settings = _settings(moto.endpoint_url, tenants)
    provision_kinesis(settings, tenants)
    sink = KinesisSink(settings)
    try:
        _publish(sink, tenants[0], [b"a", b"b", b"c"])
    finally:
        sink.close(5)
    source = KinesisSource(_settings(proxy.endpoint_url, tenants), tenants, MemoryStore())
    try:
        proxy.throttle_gets = 4
        start = time.monotonic()
        got = _poll_until(source, 3)
        elapsed = time.monotonic() - start
        assert [m.value for m in got] == [b"a", b"b", b"c"]
        assert proxy.throttled == 4
        # four backoffs of at least half of 0.05, 0.1, 0.2, 0.4 s (jittered)
        assert elapsed >= 0.35
    finally:
        source.close(5)


def test_small_polls_are_served_from_one_get_records_in_order(moto: MotoServer, proxy: FaultProxy) -> None:
    tenants = _tenants(1)
    settings = _settings(moto.endpoint_url, tenants)
    provision_kinesis(settings, tenants)
    sink = KinesisSink(settings)
    values = [f"r{i:02d}".encode() for i in range(10)]
    try:
        _publish(sink, tenants[0], values)
    finally:
        sink.close(5)
    source = KinesisSource(_settings(proxy.endpoint_url, tenants), tenants, MemoryStore())
    try:
        batches = []
        deadline = time.monotonic() + 10
        while sum(len(b) for b in batches) < len(values) and time.monotonic() < deadline:
            batch = source.poll(3, 0.2)
            if batch:
                batches.append(batch)
        assert all(len(b) <= 3 for b in batches)
        assert [m.value for b in batches for m in b] == values  # shard order kept
        assert proxy.gets == 1, "the records should have come from one GetRecords"
        assert source.in_flight() == len(values)
    finally:
        source.close(5)


def test_put_records_partial_failure_resends_exactly_the_failed_records(
    moto: MotoServer, proxy: FaultProxy
) -> None:
    tenants = _tenants(1)
    settings = _settings(moto.endpoint_url, tenants)
    provision_kinesis(settings, tenants)
    proxy.fail_entry = lambda call, index, data: call == 0 and index % 2 == 1
    sink = KinesisSink(_settings(proxy.endpoint_url, tenants))
    values = [f"v{i:02d}".encode() for i in range(10)]
    try:
        futures = [
            sink.publish(OutRecord(tenant=tenants[0], destination="verdicts", key=v, value=v)) for v in values
        ]
        for future in futures:
            assert future.result(timeout=15) is None
        assert sink.flush(5) == 0
    finally:
        sink.close(5)
    assert len(proxy.put_calls) == 2
    assert proxy.put_calls[0] == values
    assert proxy.put_calls[1] == values[1::2], "the retry must carry exactly the failed records"
    assert sink.resent == 5
    stored = _stream_contents(moto.endpoint_url, kinesis_stream("verdicts", tenants[0]))
    assert sorted(stored) == values, "every record exactly once"


def test_a_record_that_never_succeeds_fails_its_future(moto: MotoServer, proxy: FaultProxy) -> None:
    tenants = _tenants(1)
    settings = _settings(moto.endpoint_url, tenants)
    provision_kinesis(settings, tenants)
    proxy.fail_entry = lambda call, index, data: data == b"doomed"
    sink = KinesisSink(_settings(proxy.endpoint_url, tenants))
    try:
        ok = sink.publish(OutRecord(tenant=tenants[0], destination="dlq", key=b"k1", value=b"fine"))
        doomed = sink.publish(OutRecord(tenant=tenants[0], destination="dlq", key=b"k2", value=b"doomed"))
        assert ok.result(timeout=15) is None
        with pytest.raises(RetryableError) as caught:
            doomed.result(timeout=15)
        assert caught.value.reason == "partial_publish"
    finally:
        sink.close(5)
    assert len(proxy.put_calls) == settings.retry.attempts  # bounded
    assert _stream_contents(moto.endpoint_url, kinesis_stream("dlq", tenants[0])) == [b"fine"]


def test_a_missing_stream_is_fatal(moto: MotoServer) -> None:
    settings = _settings(moto.endpoint_url, ["never-made"])
    with pytest.raises(FatalError) as caught:
        KinesisSource(settings, ["never-made"], MemoryStore())
    assert caught.value.reason == "missing_topic"
