"""`audioguard bench --smoke` runs every part of the benchmark end to end, as a user runs it.

It checks that each part produced its numbers (and the plot), never how fast they are: the
benchmark prints times; tests must not assert them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path


def test_bench_smoke_produces_every_part(tmp_path: Path):
    out = tmp_path / "bench"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(f"\nbench --smoke took {time.monotonic() - started:.1f}s")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    for heading in ("stages alone", "saturation", "open loop", "sizing"):
        assert heading in result.stdout, result.stdout[-3000:]

    data = json.loads((out / "bench-smoke.json").read_text())
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["device"] in ("cpu", "cuda")
    assert machine["cpu_model"]
    # a. every batch size measured; fetch+decode, front end, speech check, forward and all of them
    # sharing the cores; the limit is the slowest, and sharing the cores is slower than any one
    assert set(data["forward"]) == {"1", "4", "16"} and all(v > 0 for v in data["forward"].values())
    stages = {s["name"].split(" (")[0]: s["uploads_per_second"] for s in data["stages"]}
    assert len(stages) == 5 and all(v > 0 for v in stages.values()), stages
    assert data["limit"]["uploads_per_second"] == min(stages.values())
    shared = stages[f"all stages above on {machine['cores']} core(s)"]
    assert shared <= machine["cores"] * min(v for k, v in stages.items() if not k.startswith("all"))
    # b./c. every backlog was fully answered (rate = events / seconds, all events counted)
    for run in [data["pipeline"], data["naive"], *data["fixed_batches"]]:
        assert run["events"] > 0 and run["rate"] > 0
        assert math.isclose(run["rate"], run["events"] / run["seconds"], rel_tol=1e-6)
    assert set(data["ratios"]) >= {"end_to_end / slowest stage", "end_to_end / naive"}
    # d. the curve: each step published arrivals across tenants and measured latencies
    assert data["curve"] and all(p["published"] > 0 and p["p99"] >= p["p50"] > 0 for p in data["curve"])
    assert data["naive_point"]["completed"] == data["naive_point"]["published"]
    # ... and where the pipeline's time went: four legs, none negative; the naive one has none
    for point in [*data["curve"], data["pipeline_point"]]:
        assert len(point["legs_p50"]) == 4 and all(leg >= -1e-3 for leg in point["legs_p50"])
        assert point["legs_p50"][2] > 0  # every upload was scored
    assert data["naive_point"]["legs_p50"] == []
    assert "where a pipeline upload's time goes" in result.stdout
    # e. a sizing answer for the default target, consistent with the measured per-worker rate
    sizing = data["sizing"]
    assert sizing["target_rate"] == 100.0 and sizing["target_p99"] == 2.0
    if sizing["workers"] is not None:
        assert sizing["workers"] == math.ceil(100.0 / sizing["per_worker_rate_at_p99"])
    # f. every core: the forward alone on each thread count, and `worker --processes 2` (processes
    # of their own) answered its whole backlog
    assert set(data["forward_threads"]) == {"1", "2"}
    assert all(rate > 0 for rates in data["forward_threads"].values() for rate in rates)
    (run,) = data["process_runs"]
    assert run["processes"] == 2 and run["events"] > 0 and run["seconds"] > 0
    assert "every core" in result.stdout
    png = out / "bench-smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one markdown page of the whole run, with every part's table and how long each part took
    page = (out / "report.md").read_text()
    for heading in (
        "## Machine",
        "## GPU",
        "## How long each part took",
        "## a. Stages alone",
        "## b./c. Saturation",
        "## Ratios and issue 16's targets",
        "## d. Open loop",
        "## Low load: both consumers at the same rate",
        "## f. Every core",
    ):
        assert heading in page, heading
    assert set(data["part_seconds"]) >= {"a. stages alone", "b./c. saturation", "f. every core"}
    assert "worker --processes 2" in page and "p99 pipeline / naive" in page


def test_bench_same_rate_runs_interleaved_pairs(tmp_path: Path):
    """`--only same-rate`: naive, pipeline, naive, pipeline at one rate, each fully answered."""
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "services.cli", "bench", "--smoke", "--scorer", "null"]
    command += ["--only", "same-rate", "--rate", "20", "--repeats", "2", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "p99 pipeline / naive" in result.stdout, result.stdout[-3000:]
    data = json.loads((out / "bench-same-rate-smoke.json").read_text())
    points = data["same_rate"]
    assert [p["consumer"] for p in points] == ["naive", "pipeline", "naive", "pipeline"]
    assert all(p["offered"] == 20 and 0 < p["completed"] == p["published"] for p in points)
    assert all(len(p["legs_p50"]) == 4 for p in points if p["consumer"] == "pipeline")
