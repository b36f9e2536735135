"""The verdict store against a real Redis server.

Uses the Redis at $AUDIOGUARD_TEST_REDIS_URL, else 127.0.0.1:6379; when neither answers it
starts `redis-server` on a free loopback port (the Makefile installs it) and stops it after.
Every test writes under a random key prefix and deletes what it wrote.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from services.errors import FatalError, RetryableError
from services.store import RedisStore, open_store, redis_key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("AUDIOGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"no Redis at {url} and no redis-server to start (make system-deps installs it)")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="audioguard-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _answers(url):
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"agtest-{uuid.uuid4().hex[:12]}"
    yield value
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{value}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[RedisStore]:
    opened = open_store(redis_url, ttl_seconds=120, key_prefix=prefix)
    assert isinstance(opened, RedisStore)
    yield opened
    opened.close()


def test_put_if_absent_keeps_the_first_value(store: RedisStore) -> None:
    store.check()
    assert store.get("acme", "k1") is None
    assert store.put_if_absent("acme", "k1", b"first") == b"first"
    assert store.put_if_absent("acme", "k1", b"second") == b"first"
    assert store.get("acme", "k1") == b"first"


def test_keys_are_namespaced_by_tenant_with_a_ttl(store: RedisStore, redis_url: str, prefix: str) -> None:
    store.put_if_absent("acme", "same", b"acme verdict")
    store.put_if_absent("globex", "same", b"globex verdict")
    assert store.get("acme", "same") == b"acme verdict"
    assert store.get("globex", "same") == b"globex verdict"
    client = redis.Redis.from_url(redis_url)
    assert redis_key(prefix, "acme", "same") == f"{prefix}:verdict:acme:same"
    assert client.get(f"{prefix}:verdict:acme:same") == b"acme verdict"
    assert 0 < client.ttl(f"{prefix}:verdict:acme:same") <= 120
    client.close()


def test_default_prefix_is_audioguard(redis_url: str) -> None:
    with open_store(redis_url) as default:
        assert isinstance(default, RedisStore)
        assert default.key_prefix == "audioguard"
        assert redis_key(default.key_prefix, "acme", "k") == "audioguard:verdict:acme:k"


def test_expired_verdict_makes_room(redis_url: str, prefix: str) -> None:
    with open_store(redis_url, ttl_seconds=1, key_prefix=prefix) as short:
        short.put_if_absent("acme", "k", b"old")
        time.sleep(1.3)
        assert short.get("acme", "k") is None
        assert short.put_if_absent("acme", "k", b"new") == b"new"


def test_binary_values_and_checkpoints(store: RedisStore) -> None:
    value = bytes(range(256))
    assert store.put_if_absent("acme", "bin", value) == value
    assert store.get("acme", "bin") == value
    assert store.get_checkpoint("kinesis:s:shardId-000") is None
    store.set_checkpoint("kinesis:s:shardId-000", "49590")
    store.set_checkpoint("kinesis:s:shardId-000", "49591")
    assert store.get_checkpoint("kinesis:s:shardId-000") == "49591"


def test_unreachable_redis_is_retryable_and_fast() -> None:
    with open_store(f"redis://127.0.0.1:{_free_port()}/0") as dead:
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            dead.put_if_absent("acme", "k", b"v")
        assert caught.value.reason == "store_unavailable"
        # no hidden client-side retries: the caller's retry policy is the only one
        assert time.monotonic() - started < 2


def test_wrong_type_is_fatal(store: RedisStore, redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.lpush(f"{prefix}:verdict:acme:list", b"x")
    client.close()
    with pytest.raises(FatalError) as caught:
        store.get("acme", "list")
    assert caught.value.reason == "store_error"


def test_bad_credentials_are_fatal(redis_url: str) -> None:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    with open_store(f"redis://nobody:wrong@{host_port}/0") as bad, pytest.raises(FatalError) as caught:
        bad.check()
    assert caught.value.reason == "auth"


def _race(url: str, prefix: str, worker: int, keys: int, start: Any) -> list[bytes]:
    store = open_store(url, ttl_seconds=120, key_prefix=prefix)
    store.check()
    seen = []
    for i in range(keys):
        start.wait()  # line both processes up on every key, so each key is a real race
        seen.append(store.put_if_absent("acme", f"key-{i}", f"worker-{worker}".encode()))
    store.close()
    return seen


def test_two_processes_racing_put_if_absent_agree(redis_url: str, prefix: str) -> None:
    keys = 300
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_race, [(redis_url, prefix, w, keys, start) for w in (0, 1)])
    winners_per_key = [0] * keys
    for worker, seen in enumerate(results):
        for i, value in enumerate(seen):
            winners_per_key[i] += value == f"worker-{worker}".encode()
    assert winners_per_key == [1] * keys
    assert results[0] == results[1]
    print(f"keys won: worker 0 {results[0].count(b'worker-0')}, worker 1 {results[0].count(b'worker-1')}")


def test_attempts_claim_begin_undo_and_clear(store: RedisStore, redis_url: str, prefix: str) -> None:
    assert store.claim_attempts([("acme", "k"), ("globex", "k")]) == [0, 0]
    assert store.claim_attempts([("acme", "k")]) == [1]
    assert store.begin_attempts([("acme", "k"), ("acme", "new")]) == [2, 1]
    client = redis.Redis.from_url(redis_url)
    assert client.get(f"{prefix}:attempts:acme:k") == b"2"
    assert 0 < client.ttl(f"{prefix}:attempts:acme:k") <= 120  # INCR and EXPIRE went together
    assert 0 < client.ttl(f"{prefix}:attempts:globex:k") <= 120  # SET NX EX
    store.undo_attempts([("acme", "k")])
    assert client.get(f"{prefix}:attempts:acme:k") == b"1"
    assert 0 < client.ttl(f"{prefix}:attempts:acme:k") <= 120
    store.undo_attempts([("acme", "k"), ("acme", "k"), ("acme", "never-begun")])
    assert client.exists(f"{prefix}:attempts:acme:k", f"{prefix}:attempts:acme:never-begun") == 0
    assert store.claim_attempts([("acme", "k")]) == [0]
    store.clear_attempts([("acme", "k"), ("globex", "k"), ("acme", "missing")])
    assert client.exists(f"{prefix}:attempts:acme:k", f"{prefix}:attempts:globex:k") == 0
    assert store.claim_attempts([]) == [] and store.begin_attempts([]) == []
    client.close()
