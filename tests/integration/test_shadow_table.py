"""Shadow scoring into PostgreSQL: a worker (in-process broker) with `shadow.model` set to a
registered challenger writes one row per upload to `shadow_scores`; `audioguard model compare`
reads them back as a table and as JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.transports.memory import MemoryBroker
from services.cli import main
from services.detector import default_artifact_dir
from services.detector.null import load_null_scorer
from services.errors import FatalError
from services.registry import FileRegistry, ShadowTable
from services.tools.worker import build_worker, shadow_scorer
from tests.support.memory import Uploads, drive, memory_settings, records, registered_broker
from tests.support.models import shipped_version

TENANT = "acme"
NAME = "audioguard-lfb-cnn"


@pytest.fixture
def memory() -> Iterator[tuple[str, MemoryBroker]]:
    with registered_broker(TENANT) as pair:
        yield pair


def test_shadow_rows_land_in_postgresql_and_compare_reads_them(
    memory: tuple[str, MemoryBroker], postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, broker = memory
    registry = FileRegistry(tmp_path / "registry")
    registry.register(NAME, default_artifact_dir())
    registry.set_alias(NAME, "challenger", 1, reason="shadow test")
    settings = memory_settings(
        name,
        [TENANT],
        tmp_path / "audio",
        registry={"uri": str(tmp_path / "registry")},
        # room for every batch: this test counts rows, the skip bound has its unit test
        shadow={"model": f"models:/{NAME}@challenger", "max_pending_batches": 100},
        database={"url": postgres_url},
        device="cpu",
        torch_threads=1,
    )
    with pytest.raises(FatalError):
        shadow_scorer(
            settings.model_copy(update={"database": settings.database.model_copy(update={"url": None})})
        )
    worker = build_worker(settings, detector=load_null_scorer())
    shadow: Any = worker.pipeline.shadow
    assert shadow is not None and shadow.challenger.meta.version.endswith("+r1")
    uploads = Uploads(broker, tmp_path / "audio")
    keys = [uploads.arrival(TENANT, f"u{i}", seed=i) for i in range(8)]
    drive(worker, lambda: len(records(broker, "verdicts", TENANT)) == 8, timeout=60)
    deadline = time.monotonic() + 60
    while shadow.scored + shadow.skipped + shadow.failed < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.pipeline.close()

    assert (shadow.skipped, shadow.failed) == (0, 0)
    rows = ShadowTable(postgres_url).read()
    assert len(rows) == 8 and {r.tenant for r in rows} == {TENANT}
    assert {(r.champion_version, r.challenger_version) for r in rows} == {
        (shipped_version(), f"{shipped_version()}+r1")
    }
    assert all(r.challenger_seconds_per_window > 0 for r in rows)

    capsys.readouterr()
    assert main(["model", "compare", "--database", postgres_url, "--json"]) == 0
    stats = {s["tenant"]: s for s in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(stats) == {"*", TENANT} and stats[TENANT]["n"] == 8
    assert main(["model", "compare", "--database", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "8 shadow records" in out and "inconclusive" in out
    assert sorted(keys) == sorted(
        json.loads(v)["idempotency_key"] for _, v, _ in records(broker, "verdicts", TENANT)
    )
