"""Shared fixtures: the real embedded broker, the real Redis, the shipped detector, test audio."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local.broker import EmbeddedBroker


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda():
        skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One broker for the session: Tansu on a free loopback port (memory storage), or, with
    AUDIOGUARD_TEST_BROKER=testcontainers and a container engine, Apache Kafka in a container."""
    if os.environ.get("AUDIOGUARD_TEST_BROKER") == "testcontainers":
        from tests.support.container_broker import ContainerBroker

        with ContainerBroker() as container:
            yield container  # type: ignore[misc]
        return
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def detector():  # type: ignore[no-untyped-def]
    from services.detector import load_detector

    return load_detector(device="cpu")


@pytest.fixture
def tenants() -> list[str]:
    """Fresh tenant ids per test, so topics and consumer groups never collide."""
    suffix = uuid.uuid4().hex[:6]
    return [f"t{i}-{suffix}" for i in range(3)]


@pytest.fixture(scope="session")
def redis_url() -> str:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 6379)) != 0:
            pytest.fail("Redis is not listening on 127.0.0.1:6379 (the Makefile's test target starts one)")
    return os.environ.get("AUDIOGUARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def audio_root(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    root.mkdir()
    return root


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database of its own on the local PostgreSQL server (trust auth on 127.0.0.1:5432, or
    AUDIOGUARD_TEST_POSTGRES for another server), created for the test and dropped after it."""
    import psycopg

    admin = os.environ.get("AUDIOGUARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"ag_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
