"""A tenant's monthly report: HTML with embedded PNG charts, and the same numbers as CSV.

Read from the `reporting.tenant_daily` view and the verdicts table; written to two files. The
HTML is self-contained (charts as data: URIs, no scripts, no external requests), so it can be
mailed or opened offline. This module never writes to the database.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from reporting.store import query

DAILY_COLUMNS = (
    "day", "uploads", "audio_hours", "share_synthetic", "share_bona_fide", "share_inconclusive",
    "p50_end_to_end_seconds", "p99_end_to_end_seconds", "dead_letters",
)  # fmt: skip


@dataclass(frozen=True)
class MonthReport:
    tenant: str
    month: str
    daily: list[dict[str, Any]]
    labels: dict[str, int]
    dead_letters_by_reason: dict[str, int]

    @property
    def uploads(self) -> int:
        return sum(int(d["uploads"]) for d in self.daily)

    @property
    def audio_hours(self) -> float:
        return sum(float(d["audio_hours"]) for d in self.daily)

    @property
    def dead_letters(self) -> int:
        return sum(self.dead_letters_by_reason.values())


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """'2026-11' -> [2026-11-01, 2026-12-01) in UTC; ValueError for anything else."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def gather(url: str, tenant: str, month: str) -> MonthReport:
    start, end = month_bounds(month)
    names, rows = query(
        url,
        f"SELECT {', '.join(DAILY_COLUMNS)}, dead_letters_by_reason FROM reporting.tenant_daily"
        " WHERE tenant_id = %s AND day >= %s AND day < %s ORDER BY day",
        (tenant, start, end),
    )
    daily = [dict(zip(names, row, strict=True)) for row in rows]
    _, labels = query(
        url,
        "SELECT label, count(*) FROM reporting.verdicts"
        " WHERE tenant_id = %s AND processed_at >= %s AND processed_at < %s GROUP BY label",
        (tenant, start, end),
    )
    reasons: dict[str, int] = {}
    for day in daily:
        for reason, n in (day.pop("dead_letters_by_reason") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    return MonthReport(tenant, month, daily, {str(k): int(v) for k, v in labels}, reasons)


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _charts(report: MonthReport) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    days = [d["day"].strftime("%d") for d in report.daily]
    charts = []
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(days, [int(d["uploads"]) for d in report.daily], color="#3465a4")
    ax.set_title("uploads checked per day")
    ax.set_xlabel(f"day of {report.month}")
    charts.append(("uploads per day", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    names = ["synthetic", "bona_fide", "inconclusive"]
    ax.bar(names, [report.labels.get(n, 0) for n in names], color=["#cc0000", "#4e9a06", "#c4a000"])
    ax.set_title("verdicts by label")
    charts.append(("verdicts by label", _png(fig)))
    plt.close(fig)
    return charts


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, float | Decimal):  # PostgreSQL's numeric arrives as Decimal ("0E-20")
        return f"{value:.3f}"
    return str(value)


def render_html(report: MonthReport) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in DAILY_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(d[c]))}</td>" for c in DAILY_COLUMNS) + "</tr>"
        for d in report.daily
    )
    # each chart carries its title in the image; the alt text says it to a screen reader
    charts = "".join(f'<figure><img alt="{esc(t)}" src="{src}"></figure>' for t, src in _charts(report))
    reasons = "".join(f"<li>{esc(r)}: {n}</li>" for r, n in sorted(report.dead_letters_by_reason.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>audioguard report {esc(report.tenant)} {esc(report.month)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}figure{{display:inline-block;margin:0 1em 0 0}}
img{{max-width:100%}}.wide{{overflow-x:auto}}</style></head>
<body><h1>audioguard: {esc(report.tenant)}, {esc(report.month)}</h1>
<p>Uploads checked: <strong id="uploads">{report.uploads}</strong>;
audio hours: <strong id="audio-hours">{report.audio_hours:.2f}</strong>;
synthetic: <strong id="synthetic">{report.labels.get("synthetic", 0)}</strong>;
bona fide: <strong id="bona-fide">{report.labels.get("bona_fide", 0)}</strong>;
inconclusive: <strong id="inconclusive">{report.labels.get("inconclusive", 0)}</strong>;
dead letters: <strong id="dead-letters">{report.dead_letters}</strong>.</p>
{charts}
<h2>Per day</h2><div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<h2>Dead letters by reason</h2><ul>{reasons or "<li>none</li>"}</ul>
</body></html>
"""


def write_report(url: str, tenant: str, month: str, out_dir: Path) -> tuple[Path, Path, MonthReport]:
    """-> (html path, csv path, the numbers)."""
    report = gather(url, tenant, month)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"audioguard-{tenant}-{month}.html"
    csv_path = out_dir / f"audioguard-{tenant}-{month}.csv"
    html_path.write_text(render_html(report), encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(DAILY_COLUMNS)
        for d in report.daily:
            writer.writerow([_cell(d[c]) for c in DAILY_COLUMNS])
    return html_path, csv_path, report
