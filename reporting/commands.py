"""The work behind `audioguard report ...` (argument parsing lives in services.cli.report).

Each function takes plain values, prints with rich and returns an exit code:
0 done; 1 some input rows were refused (they are listed); 2 usage (no database configured).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from reporting.store import load_feedback, migrate_store, parse_feedback_csv, query, scores_with_truth
from services.detector.training.metrics import eer

NO_DATABASE = (
    "no reporting database: set database.url (env AUDIOGUARD_DATABASE__URL=postgresql://user@host:5432/db) "
    "or pass --database-url; any PostgreSQL 13+ works, e.g. `docker run -p 5432:5432 -e "
    "POSTGRES_HOST_AUTH_METHOD=trust postgres:16`"
)


def migrate(url: str, console: Console) -> int:
    applied = migrate_store(url)
    done = ", ".join(applied) if applied else "none (up to date)"
    console.print(f"reporting migrations applied now: {done}")
    return 0


def feedback_load(url: str, path: Path, console: Console) -> int:
    decisions, refused = parse_feedback_csv(path)
    loaded = load_feedback(url, decisions, source=f"csv:{path.name}")
    console.print(f"feedback loaded: {loaded} decisions from {path}")
    for line, reason in refused:
        console.print(f"[red]line {line} refused[/red]: {reason}")
    return 1 if refused else 0


def model_report(url: str, model_version: str | None, console: Console) -> int:
    """The evaluation view: per model version the score distribution, the confusion matrix at
    the operating threshold (with Wilson 95% intervals) and the EER against feedback."""
    sql = "SELECT * FROM reporting.model_versions"
    params: tuple[str, ...] = ()
    if model_version:
        sql += " WHERE model_version = %s"
        params = (model_version,)
    names, rows = query(url, sql + " ORDER BY model_version", params)
    scores = scores_with_truth(url, model_version)
    table = Table(title="model versions against feedback")
    for column in ("model", "verdicts", "p50 score", "with feedback", "TP", "FP", "TN", "FN",
                   "precision [95% CI]", "recall [95% CI]", "EER"):  # fmt: skip
        table.add_column(column, justify="right" if column != "model" else "left")
    for raw in rows:
        row = dict(zip(names, raw, strict=True))
        tp, fp, tn, fn = (int(row[k]) for k in ("true_positives", "false_positives", "true_negatives",
                                                  "false_negatives"))  # fmt: skip
        by_truth = scores.get(row["model_version"], {"bona_fide": [], "synthetic": []})
        rate, _ = eer(np.array(by_truth["bona_fide"]), np.array(by_truth["synthetic"]))
        table.add_row(
            f"{row['model_name']} {row['model_version']}", str(row["verdicts"]), f"{row['p50_score']:.3f}",
            str(row["with_feedback"]), str(tp), str(fp), str(tn), str(fn),
            _ratio(tp, tp + fp), _ratio(tp, tp + fn), "-" if math.isnan(rate) else f"{rate:.4f}",
        )  # fmt: skip
    console.print(table)
    return 0


def model_eer(url: str, model_version: str) -> float:
    """The EER of one model version against feedback (what `report model` prints)."""
    by_truth = scores_with_truth(url, model_version).get(model_version, {"bona_fide": [], "synthetic": []})
    return eer(np.array(by_truth["bona_fide"]), np.array(by_truth["synthetic"]))[0]


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if total == 0:
        return float("nan"), float("nan")
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def _ratio(successes: int, total: int) -> str:
    if total == 0:
        return "-"
    low, high = wilson(successes, total)
    return f"{successes / total:.3f} [{low:.3f}, {high:.3f}]"


def tenant_report(url: str, tenant: str, month: str, out_dir: Path, console: Console) -> int:
    from reporting.customer_report import write_report

    html_path, csv_path, report = write_report(url, tenant, month, out_dir)
    console.print(f"{tenant} {month}: {report.uploads} uploads, {report.audio_hours:.2f} audio hours, "
                  f"{report.dead_letters} dead letters")  # fmt: skip
    console.print(f"wrote {html_path}\nwrote {csv_path}")
    return 0
