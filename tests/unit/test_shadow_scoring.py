"""Shadow scoring in the in-process pipeline, and the comparison statistics."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from consumers.shadow import ShadowScorer, in_share
from services.registry import ShadowRow, compare
from services.registry._compare import ks_critical, ks_statistic
from tests.support.memory import (
    ConstantDetector,
    ConstantMeta,
    Uploads,
    build_memory_worker,
    drive,
    memory_settings,
    records,
)

TENANT = "acme"


def _row(champion: tuple[str, float], challenger: tuple[str, float], tenant: str = TENANT) -> ShadowRow:
    return ShadowRow(
        tenant, "1+r1", champion[0], champion[1], "1+r2", challenger[0], challenger[1], 2, 0.001, 0.002
    )


def test_in_share_is_stable_and_close_to_the_share() -> None:
    keys = [f"k{i}" for i in range(4000)]
    picked = [k for k in keys if in_share(k, 0.25)]
    assert 850 < len(picked) < 1150
    assert picked == [k for k in keys if in_share(k, 0.25)]
    assert all(in_share(k, 1.0) for k in keys[:10]) and not any(in_share(k, 0.0) for k in keys[:10])


def test_ks_statistic_and_its_sample_size_aware_bar() -> None:
    assert ks_statistic([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 0.0
    assert ks_statistic([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert ks_critical(100, 100) > ks_critical(10_000, 10_000)
    rng = random.Random(7)
    same = [rng.random() for _ in range(2000)]
    other = [rng.random() for _ in range(2000)]
    shifted = [min(1.0, x + 0.1) for x in other]
    rows_same = [_row(("bona_fide", a), ("bona_fide", b)) for a, b in zip(same, other, strict=True)]
    rows_shifted = [_row(("bona_fide", a), ("bona_fide", b)) for a, b in zip(same, shifted, strict=True)]
    assert not compare(rows_same)[0].shifted
    assert compare(rows_shifted)[0].shifted
    # the same 0.1 shift on 10 uploads is not evidence enough
    assert not compare(rows_shifted[:10])[0].shifted


def test_compare_agreement_flips_and_cost_per_tenant() -> None:
    rows = [
        _row(("synthetic", 0.9), ("synthetic", 0.8)),
        _row(("synthetic", 0.9), ("bona_fide", 0.2)),
        _row(("bona_fide", 0.1), ("bona_fide", 0.1)),
        _row(("bona_fide", 0.1), ("inconclusive", 0.45), tenant="globex"),
    ]
    by_tenant = {s.tenant: s for s in compare(rows)}
    assert set(by_tenant) == {"*", TENANT, "globex"}
    acme = by_tenant[TENANT]
    assert (acme.n, acme.agree) == (3, 2) and acme.agreement == pytest.approx(2 / 3)
    assert acme.flips == {
        ("synthetic", "synthetic"): 1,
        ("synthetic", "bona_fide"): 1,
        ("bona_fide", "bona_fide"): 1,
    }
    assert by_tenant["*"].n == 4 and by_tenant["globex"].agreement == 0.0
    assert acme.champion_ms_per_window == pytest.approx(
        1.0
    ) and acme.challenger_ms_per_window == pytest.approx(2.0)
    assert json.loads(json.dumps(acme.to_json()))["flips"]["synthetic->bona_fide"] == 1


def test_a_challenger_scores_in_shadow_and_customers_see_only_the_champion(
    broker: Any, tmp_path: Path
) -> None:
    name, memory = broker
    settings = memory_settings(name, [TENANT], tmp_path / "audio")
    champion = ConstantDetector(score=0.9)
    challenger = ConstantDetector(score=0.1, meta=ConstantMeta(name="constant", version="2.0.0"))
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(batch: list[dict[str, Any]]) -> None:
        with lock:
            rows.extend(batch)

    with ThreadPoolExecutor(1) as pool:
        shadow = ShadowScorer(challenger, record=record, executor=pool, max_pending=100, worker_id="w")
        worker = build_memory_worker(settings, memory, champion, shadow=shadow)
        uploads = Uploads(memory, tmp_path / "audio")
        keys = [uploads.arrival(TENANT, f"c{i}", seed=i) for i in range(12)]
        drive(worker, lambda: len(records(memory, "verdicts", TENANT)) == 12)
        deadline = time.monotonic() + 10
        while shadow.scored < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.pipeline.close()
    verdicts = [json.loads(v) for _, v, _ in records(memory, "verdicts", TENANT)]
    assert {v["label"] for v in verdicts} == {"synthetic"}  # the champion's, never the challenger's
    assert {v["model"]["version"] for v in verdicts} == {"0.0.0"}
    assert sorted(r["idempotency_key"] for r in rows) == sorted(keys)
    assert {(r["champion_label"], r["challenger_label"]) for r in rows} == {("synthetic", "bona_fide")}
    assert {(r["champion_version"], r["challenger_version"]) for r in rows} == {("0.0.0", "2.0.0")}
    assert challenger.windows_scored == sum(r["windows"] for r in rows)


@pytest.mark.parametrize("max_pending", [0, 10])
def test_shadow_work_is_skipped_when_its_queue_is_full_and_its_failures_stay_inside(
    broker: Any, tmp_path: Path, max_pending: int
) -> None:
    name, memory = broker
    settings = memory_settings(name, [TENANT], tmp_path / "audio")

    def broken(_: list[dict[str, Any]]) -> None:
        raise RuntimeError("the shadow table is down")

    with ThreadPoolExecutor(1) as pool:
        shadow = ShadowScorer(ConstantDetector(), record=broken, executor=pool, max_pending=max_pending)
        worker = build_memory_worker(settings, memory, ConstantDetector(), shadow=shadow)
        uploads = Uploads(memory, tmp_path / "audio")
        for i in range(6):
            uploads.arrival(TENANT, f"s{i}", seed=i)
        drive(worker, lambda: len(records(memory, "verdicts", TENANT)) == 6)
        deadline = time.monotonic() + 10
        while shadow.skipped + shadow.failed < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.pipeline.close()
    # full queue: every upload skipped; a failing table: every upload counted failed; the
    # customer path is untouched either way
    assert (shadow.skipped, shadow.failed, shadow.scored) == ((6, 0, 0) if max_pending == 0 else (0, 6, 0))
    assert records(memory, "dlq", TENANT) == []
