"""bench-out/report.md: every table of a run, and the issue's targets judged from its ratios."""

from __future__ import annotations

from pathlib import Path

from services.tools.bench import BenchConfig, BenchResult, LoadPoint, Machine, ProcessRun, Saturation, Stage
from services.tools.bench_report import markdown, write_report


def _result(device: str = "cpu", pipeline_rate: float = 300.0) -> BenchResult:
    machine = Machine("Test CPU", 2, 1, device, (0.5, 0.4, 0.3), "3.11.7")
    result = BenchResult(machine=machine, clip_seconds=12.0, windows_per_upload=3, scorer="null")
    result.started_at = "2026-12-02 18:00 UTC"
    result.load_average_end = (1.5, 1.0, 0.5)
    result.stages = [Stage("fetch+decode", 900.0), Stage("model forward", 5000.0)]
    result.limit = result.stages[0]
    result.decode = [
        Stage("read + decode alone, 1 thread", 1000.0),
        Stage("read + decode alone, 2 threads", 1200.0),
    ]
    result.pipeline = Saturation("pipeline (default)", 2000, 7.0, 285.0, 12.0, 32, pipeline_rate)
    result.naive = Saturation("naive consumer", 1000, 4.0, 250.0, 1.0, 1, 260.0)
    result.scratch = Saturation("from-scratch loop", 2000, 5.0, 400.0, 1.0, 1, 400.0)
    result.naive_point = LoadPoint("naive", 180.0, 179.0, 2000, 2000, 0.03, 0.05)
    result.pipeline_point = LoadPoint(
        "pipeline", 180.0, 179.0, 2000, 2000, 0.04, 0.08, (0.02, 0.01, 0.0, 0.01)
    )
    result.process_runs = [
        ProcessRun("worker (one process)", 0, 1, 800, 10.0, 80.0, 80.0),
        ProcessRun("worker --processes 1", 1, 2, 800, 10.0, 80.0, 81.0),
        ProcessRun("worker --processes 2", 2, 1, 800, 6.0, 130.0, 140.0),
    ]
    result.part_seconds = {"a. stages alone": 20.0, "b./c. saturation": 200.0}
    result.overload = {
        "capacity_per_second": 50.0,
        "flood_rate_per_second": 500.0,
        "seconds": 20.0,
        "published": 10000,
        "verdicts": 1000,
        "lost": 0,
        "rss_after_warmup_min_mb": 700.0,
        "rss_after_warmup_max_mb": 720.0,
        "rss_deviation_pct": 1.5,
        "rss_drift_pct": 0.4,
    }
    return result


def test_every_table_and_the_targets_judged_from_the_ratios():
    page = markdown(_result(), BenchConfig(scorer="null"), 612.0)
    assert "612 s in all" in page and "(0.5, 0.4, 0.3) / (1.5, 1.0, 0.5)" in page
    # 300 / 400 = 0.75x the from-scratch loop: below the 2x target; 300 / 1200 = 0.25x decode alone
    assert "| end_to_end / from-scratch loop | 0.75x | >= 2x: **not met** |" in page
    assert "| end_to_end / decode alone (fastest) | 0.25x | >= 0.6x: **not met** |" in page
    # 140 / 81 processes 2 against 1: 1.73x, above 1.7x
    assert "| 2 processes / 1 process (medians) | 1.73x | >= 1.7x: met |" in page
    assert "p99 pipeline / naive: 1.60x (target <= 1x: **not met**)" in page
    assert "| 50.0 | 500.0 | 20 | 10000 | 1000 | 0 | 700-720 | 1.5 % | +0.4 % |" in page
    assert "No GPU: this run scored on `cpu`" in page
    assert "| b./c. saturation | 200.0 |" in page


def test_a_run_that_meets_the_ceiling_target_says_so(tmp_path: Path):
    path = write_report(
        _result("cuda:0", pipeline_rate=900.0), BenchConfig(scorer="null"), 1.0, tmp_path / "r.md"
    )
    page = path.read_text()
    assert "| end_to_end / from-scratch loop | 2.25x | >= 2x: met |" in page
    assert "This run scored on `cuda:0`" in page
