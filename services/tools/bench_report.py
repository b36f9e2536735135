"""One markdown report of one `audioguard bench` run (bench-out/report.md).

Everything docs/BENCHMARKS.md quotes comes from a single run of the bench, so the page can be
regenerated from this file instead of being pieced together from several runs on a shared
machine: the machine and its load at start and end, how long each part took, every table the
bench prints (stages, saturation, the null-scorer ceiling against the issue's targets, the
open-loop curve, the same-rate low-load comparison, worker processes 1 and 2, RSS under
overload) and what the run says about a GPU. It only formats numbers the bench measured; it
never measures, and never asserts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.tools.bench import (
    LEGS,
    SATURATION_COLUMNS,
    BenchConfig,
    BenchResult,
    process_label,
    saturation_row,
)

__all__ = ["TARGETS", "markdown", "write_report"]

#: issue 16's targets, as (ratio name in BenchResult.ratios(), the least it should be)
TARGETS: dict[str, float] = {
    "end_to_end / from-scratch loop": 2.0,
    "end_to_end / decode alone (fastest)": 0.6,
    "2 processes / 1 process (medians)": 1.7,
}


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def markdown(result: BenchResult, config: BenchConfig, seconds: float) -> str:
    m = result.machine
    out = [f"# audioguard bench, {result.started_at or 'run'}", ""]
    out += [
        f"`audioguard bench{' --smoke' if config.smoke else ''}` (scorer `{config.scorer}`), "
        f"{seconds:.0f} s in all. Uploads of {result.clip_seconds:g} s = {result.windows_per_upload} "
        "window(s). Numbers of one run on one machine; compare changes only in interleaved A/B runs.",
        "",
        "## Machine",
        "",
    ]
    load_end = result.load_average_end or ("?", "?", "?")
    out += _table(
        ("", ""),
        (
            ("CPU", f"{m.cpu_model}, {m.cores} cores"),
            ("torch threads", m.torch_threads),
            ("device", m.device),
            ("Python", m.python),
            ("load average at start / end", f"{m.load_average} / {load_end}"),
        ),
    )
    out += ["## GPU", "", _gpu_statement(m.device), ""]
    if result.part_seconds:
        out += ["## How long each part took", ""]
        out += _table(("part", "seconds"), ((part, _f(s)) for part, s in result.part_seconds.items()))
    if result.stages:
        out += _stages(result)
        out += _saturation(result)
        out += _targets(result)
    if result.curve:
        out += _curve(result)
    out += _same_rate(result)
    if result.sizing:
        out += ["## e. Sizing", "", f"`{result.sizing}`", ""]
    if result.cold_start:
        out += ["## Cold start (s after process start)", ""]
        names = list(result.cold_start[0])
        out += _table(
            names, ([_f(start.get(n, float("nan")), 2) for n in names] for start in result.cold_start)
        )
    out += _processes(result)
    out += _overload(result)
    if result.notes:
        out += ["## Notes", "", *(f"- {note}" for note in result.notes), ""]
    return "\n".join(out)


def _gpu_statement(device: str) -> str:
    if device.startswith("cuda"):
        return (
            f"This run scored on `{device}`. The GPU checks (forward by batch size, CUDA against CPU "
            "scores) are `scripts/gpu_check.sh`; its output belongs beside this report."
        )
    return (
        f"No GPU: this run scored on `{device}`. `scripts/gpu_check.sh` measures the GPU path where "
        "one is present; nothing here says anything about a GPU's rate."
    )


def _stages(result: BenchResult) -> list[str]:
    out = ["## a. Stages alone", ""]
    if result.forward:
        out += _table(
            ("batch", "windows/s", "ms/batch"),
            ((size, _f(rate), _f(1000 * size / rate)) for size, rate in result.forward.items()),
        )
    rows = [
        (
            stage.name + (" **(limit)**" if stage == result.limit else ""),
            _f(stage.uploads_per_second),
            stage.note,
        )
        for stage in result.stages
    ]
    rows += [(stage.name, _f(stage.uploads_per_second), "files/s, no framework") for stage in result.decode]
    return out + _table(("stage", "uploads/s", "note"), rows)


def _saturation(result: BenchResult) -> list[str]:
    out = [
        "## b./c. Saturation (pre-published backlog, best of the interleaved repeats)",
        "",
        "cores: CPU seconds per wall second from the first record consumed to the last verdict, of "
        "the bench process (the consumer's threads) and of the embedded broker.",
        "",
    ]
    return out + _table(SATURATION_COLUMNS, (saturation_row(r) for r in result.saturation_runs()))


def _targets(result: BenchResult) -> list[str]:
    ratios = result.ratios()
    out = [f"## Ratios and issue 16's targets (scorer of this run: {result.scorer})", ""]
    rows = []
    for name, value in ratios.items():
        target = TARGETS.get(name)
        verdict = (
            "" if target is None else (f">= {target:g}x: " + ("met" if value >= target else "**not met**"))
        )
        rows.append((name, f"{value:.2f}x", verdict))
    out += _table(("ratio", "this run", "target"), rows)
    if result.scorer != "null":
        out += [
            "The first two targets are about the framework's own ceiling: they hold for a run with "
            "`--scorer null` (`audioguard bench --scorer null --ceiling`).",
            "",
        ]
    return out


def _curve(result: BenchResult) -> list[str]:
    out = ["## d. Open loop (Poisson, several tenants)", ""]
    out += _table(
        ("offered/s", "achieved/s", "completed", "p50 s", "p99 s", *(f"{leg} ms" for leg in LEGS)),
        (
            (
                _f(p.offered),
                _f(p.achieved),
                f"{p.completed}/{p.published}",
                _f(p.p50, 3),
                _f(p.p99, 3),
                *(_f(1000 * leg) for leg in p.legs_p50),
            )
            for p in result.curve
        ),
    )
    if result.breaking_rate is not None:
        out += [f"Breaking point: offered {result.breaking_rate:.1f} uploads/s.", ""]
    return out


def _same_rate(result: BenchResult) -> list[str]:
    points = result.same_rate or [p for p in (result.naive_point, result.pipeline_point) if p is not None]
    if not points:
        return []
    out = ["## Low load: both consumers at the same rate (0.7x the naive capacity unless --rate)", ""]
    out += _table(
        ("consumer", "offered/s", "achieved/s", "completed", "p50 s", "p99 s"),
        (
            (
                p.consumer,
                _f(p.offered),
                _f(p.achieved),
                f"{p.completed}/{p.published}",
                _f(p.p50, 3),
                _f(p.p99, 3),
            )
            for p in points
        ),
    )
    naive = sorted(p.p99 for p in points if p.consumer == "naive")
    pipeline = sorted(p.p99 for p in points if p.consumer == "pipeline")
    if naive and pipeline:
        ratio = pipeline[len(pipeline) // 2] / naive[len(naive) // 2]
        verdict = "met" if ratio <= 1.0 else "**not met**"
        out += [f"p99 pipeline / naive: {ratio:.2f}x (target <= 1x: {verdict}).", ""]
    return out


def _processes(result: BenchResult) -> list[str]:
    if not (result.forward_threads or result.process_runs):
        return []
    out = ["## f. Every core", ""]
    if result.forward_threads:
        out += _table(
            ("torch threads", "min", "median", "max windows/s"),
            (
                (threads, _f(min(rates)), _f(sorted(rates)[len(rates) // 2]), _f(max(rates)))
                for threads, rates in result.forward_threads.items()
            ),
        )
    threads_of = {r.label: r.torch_threads for r in result.process_runs}
    out += _table(
        ("variant", "torch threads each", "runs", "min", "median", "max steady uploads/s"),
        (
            (label, threads_of[label], int(s["runs"]), _f(s["min"]), _f(s["median"]), _f(s["max"]))
            for label, s in result.process_summary().items()
        ),
    )
    order = [
        process_label(0),
        *(process_label(n) for n in sorted({r.processes for r in result.process_runs} - {0})),
    ]
    rounds = [
        " / ".join(_f(r.steady_rate) for r in result.process_runs if r.label == label) for label in order
    ]
    per_variant = "; ".join(f"{o}: {r}" for o, r in zip(order, rounds, strict=True) if r)
    out += [f"Per variant, in round order: {per_variant}.", ""]
    return out


def _overload(result: BenchResult) -> list[str]:
    o: dict[str, Any] | None = result.overload
    if not o:
        return []
    out = ["## RSS under overload (`services.tools.loadtest.overload`, a worker process)", ""]
    return out + _table(
        (
            "capacity/s",
            "flood/s",
            "seconds",
            "published",
            "verdicts",
            "lost",
            "RSS after warm-up MiB",
            "+- of median",
            "drift",
        ),
        (
            (
                _f(o["capacity_per_second"]),
                _f(o["flood_rate_per_second"]),
                _f(o["seconds"], 0),
                o["published"],
                o["verdicts"],
                o["lost"],
                f"{o['rss_after_warmup_min_mb']:.0f}-{o['rss_after_warmup_max_mb']:.0f}",
                f"{o['rss_deviation_pct']:.1f} %",
                f"{o['rss_drift_pct']:+.1f} %",
            ),
        ),
    )


def write_report(result: BenchResult, config: BenchConfig, seconds: float, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result, config, seconds))
    return path
