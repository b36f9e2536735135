"""The verdict store's contract on the embedded backends (memory, SQLite file), plus SQLite's
cross-process race. Redis runs the same checks in tests/integration/test_store_redis.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.errors import FatalError, RetryableError
from services.store import MemoryStore, SqliteStore, VerdictStore, open_store


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VerdictStore, FakeClock]]:
    clock = FakeClock()
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/verdicts.db"
    store = open_store(url, ttl_seconds=60, clock=clock)
    yield store, clock
    store.close()


def test_put_if_absent_keeps_the_first_value(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, _ = clocked
    assert store.get("acme", "k1") is None
    assert store.put_if_absent("acme", "k1", b"first") == b"first"
    assert store.put_if_absent("acme", "k1", b"second") == b"first"
    assert store.get("acme", "k1") == b"first"


def test_tenants_cannot_collide(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, _ = clocked
    assert store.put_if_absent("acme", "same-key", b"acme verdict") == b"acme verdict"
    assert store.put_if_absent("globex", "same-key", b"globex verdict") == b"globex verdict"
    assert store.get("acme", "same-key") == b"acme verdict"
    assert store.get("globex", "same-key") == b"globex verdict"
    # a key that looks like it carries a tenant prefix stays inside its own tenant
    store.put_if_absent("acme", "globex:x", b"a")
    assert store.get("globex", "x") is None


def test_ttl_is_honoured_on_read_and_write(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, clock = clocked
    store.put_if_absent("acme", "k", b"old")
    clock.now += 59.9
    assert store.get("acme", "k") == b"old"
    clock.now += 0.2
    assert store.get("acme", "k") is None
    # an expired verdict no longer blocks a new one
    assert store.put_if_absent("acme", "k", b"new") == b"new"
    assert store.get("acme", "k") == b"new"


def test_binary_values_survive(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, _ = clocked
    value = bytes(range(256)) * 4
    assert store.put_if_absent("acme", "bin", value) == value
    assert store.get("acme", "bin") == value


def test_checkpoints_overwrite_and_never_expire(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, clock = clocked
    assert store.get_checkpoint("kinesis:audioguard-arrivals-acme:shardId-000") is None
    store.set_checkpoint("kinesis:audioguard-arrivals-acme:shardId-000", "4959")
    store.set_checkpoint("kinesis:audioguard-arrivals-acme:shardId-000", "4960")
    clock.now += 10 * 365 * 24 * 3600
    assert store.get_checkpoint("kinesis:audioguard-arrivals-acme:shardId-000") == "4960"


@pytest.mark.parametrize("tenant", ["Acme", "a:b", "", "x" * 41])
def test_invalid_tenant_is_refused(clocked: tuple[VerdictStore, FakeClock], tenant: str) -> None:
    store, _ = clocked
    with pytest.raises(ValueError, match="invalid tenant"):
        store.put_if_absent(tenant, "k", b"v")


def test_empty_key_is_refused(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, _ = clocked
    with pytest.raises(ValueError, match="idempotency key"):
        store.get("acme", "")


def test_sqlite_survives_reopen_and_prunes(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "v.db"
    with SqliteStore(path, ttl_seconds=10, clock=clock) as store:
        for i in range(5):
            store.put_if_absent("acme", f"k{i}", b"v")
        store.set_checkpoint("c", "1")
    with SqliteStore(path, ttl_seconds=10, clock=clock) as store:
        assert store.get("acme", "k3") == b"v"
        assert store.get_checkpoint("c") == "1"
        clock.now += 11
        assert store.prune() == 5
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM verdicts").fetchone()[0]
    assert rows == 0
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_prunes_expired_rows_as_writes_go_by(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "v.db"
    with SqliteStore(path, ttl_seconds=10, prune_interval_seconds=30, clock=clock) as store:
        for i in range(20):
            store.put_if_absent("acme", f"old{i}", b"v")
        clock.now += 31
        store.put_if_absent("acme", "new", b"v")
        rows = sqlite3.connect(path).execute("SELECT key FROM verdicts").fetchall()
    assert rows == [("new",)]


def test_sqlite_busy_maps_to_retryable(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with SqliteStore(path, busy_timeout_seconds=0.05) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            with pytest.raises(RetryableError) as caught:
                store.put_if_absent("acme", "k", b"v")
            assert caught.value.reason == "store_unavailable"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # and the store is usable again once the lock is gone
        assert store.put_if_absent("acme", "k", b"v") == b"v"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://x/y",
        "sqlite://",
        "sqlite:///",
        "memory://somewhere",
        "no-scheme",
        "redis://h:1/notanumber",
    ],
)
def test_bad_urls_are_bad_config(url: str) -> None:
    with pytest.raises(FatalError) as caught:
        open_store(url)
    assert caught.value.reason == "bad_config"


def test_missing_directory_is_bad_config(tmp_path: Path) -> None:
    with pytest.raises(FatalError) as caught:
        open_store(f"sqlite:///{tmp_path}/no/such/dir/v.db")
    assert caught.value.reason == "bad_config"
    assert "does not exist" in str(caught.value)


def test_bad_ttl_is_bad_config() -> None:
    with pytest.raises(FatalError, match="ttl"):
        open_store("memory://", ttl_seconds=0)


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    relative = open_store(f"sqlite:///{tmp_path}/a.db")  # absolute path: four slashes in all
    assert isinstance(relative, SqliteStore) and relative.path == tmp_path / "a.db"
    relative.close()


def _race(path: str, worker: int, keys: int, start: multiprocessing.synchronize.Barrier) -> list[bytes]:
    store = SqliteStore(path, busy_timeout_seconds=30)
    seen = []
    for i in range(keys):
        start.wait()  # line both processes up on every key, so each key is a real race
        seen.append(store.put_if_absent("acme", f"key-{i}", f"worker-{worker}".encode()))
    store.close()
    return seen


def test_two_processes_racing_put_if_absent_agree(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    SqliteStore(path).close()  # create the schema once, so the race is only about the rows
    keys = 300
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_race, [(path, 0, keys, start), (path, 1, keys, start)])
    winners_per_key = [0] * keys
    for worker, seen in enumerate(results):
        for i, value in enumerate(seen):
            winners_per_key[i] += value == f"worker-{worker}".encode()
    # exactly one writer won each key, and both processes saw that same value
    assert winners_per_key == [1] * keys
    print(f"keys won: worker 0 {results[0].count(b'worker-0')}, worker 1 {results[0].count(b'worker-1')}")
    assert results[0] == results[1]
    with SqliteStore(path) as store:
        assert [store.get("acme", f"key-{i}") for i in range(keys)] == results[0]


# -- attempts in progress (the crash-loop quarantine's counters) ----------------------------
def test_claim_counts_a_first_attempt_and_reports_earlier_ones(
    clocked: tuple[VerdictStore, FakeClock],
) -> None:
    store, _ = clocked
    assert store.claim_attempts([("acme", "k"), ("acme", "j")]) == [0, 0]  # both counted now
    assert store.claim_attempts([("acme", "k"), ("globex", "k")]) == [1, 0]  # k left as it was
    assert store.begin_attempts([("acme", "k"), ("acme", "new")]) == [2, 1]
    assert store.claim_attempts([("acme", "k"), ("acme", "new")]) == [2, 1]
    assert store.claim_attempts([]) == [] and store.begin_attempts([]) == []


def test_undo_takes_back_one_attempt_never_below_zero(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, _ = clocked
    store.begin_attempts([("acme", "k"), ("acme", "k")])
    store.undo_attempts([("acme", "k")])
    assert store.claim_attempts([("acme", "k")]) == [1]
    store.undo_attempts([("acme", "k"), ("acme", "k"), ("acme", "never-begun")])
    store.undo_attempts([])
    assert store.claim_attempts([("acme", "k"), ("acme", "never-begun")]) == [0, 0]
    assert store.begin_attempts([("acme", "k")]) == [2]


def test_clear_forgets_only_the_pairs_named(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, _ = clocked
    store.claim_attempts([("acme", "a"), ("acme", "b"), ("acme", "c"), ("globex", "a")])
    store.clear_attempts([("acme", "a"), ("acme", "b"), ("acme", "missing")])
    store.clear_attempts([])
    assert store.claim_attempts([("acme", "a"), ("acme", "b"), ("acme", "c"), ("globex", "a")]) == [
        0,
        0,
        1,
        1,
    ]


def test_attempt_counters_expire_with_the_ttl(clocked: tuple[VerdictStore, FakeClock]) -> None:
    store, clock = clocked
    store.claim_attempts([("acme", "k")])
    clock.now += 59.9
    assert store.begin_attempts([("acme", "k")]) == [2]  # and the TTL starts again
    clock.now += 59.9
    assert store.claim_attempts([("acme", "k")]) == [2]
    clock.now += 0.2
    assert store.claim_attempts([("acme", "k")]) == [0]
    clock.now += 60.1
    assert store.begin_attempts([("acme", "k")]) == [1]


def test_sqlite_attempts_survive_a_process_that_died(tmp_path: Path) -> None:
    # what a crash leaves behind is what the next worker reads: the counter is in the file
    path = tmp_path / "v.db"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_claim_and_die, args=(str(path),))
    child.start()
    child.join(60)
    assert child.exitcode == -9
    with SqliteStore(path) as store:
        assert store.claim_attempts([("acme", "poison")]) == [1]


def _claim_and_die(path: str) -> None:
    import os
    import signal

    store = SqliteStore(path)
    store.claim_attempts([("acme", "poison")])
    os.kill(os.getpid(), signal.SIGKILL)
