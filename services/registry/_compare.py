"""Champion vs challenger over shadow records: agreement, label flips, score shift, cost.

The score-distribution test is the two-sample Kolmogorov-Smirnov statistic D against its
critical value at significance `alpha`, D_crit = c(alpha) * sqrt((n + m) / (n * m)) with
c(alpha) = sqrt(-ln(alpha / 2) / 2) (1.628 at alpha = 0.01): the bar falls as samples grow, so
a small sample is not called shifted on noise and a large one is not excused by a fixed cut-off
(a fixed PSI threshold does neither). This module computes; it never reads a database.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LABELS", "PairStats", "ShadowRow", "compare", "ks_critical", "ks_statistic"]

LABELS = ("synthetic", "bona_fide", "inconclusive")


@dataclass(frozen=True)
class ShadowRow:
    tenant: str
    champion_version: str
    champion_label: str
    champion_score: float
    challenger_version: str
    challenger_label: str
    challenger_score: float
    windows: int
    champion_seconds_per_window: float
    challenger_seconds_per_window: float


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """max |F_a(x) - F_b(x)| over the pooled sample."""
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(xs) and j < len(ys):
        x = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= x:
            i += 1
        while j < len(ys) and ys[j] <= x:
            j += 1
        d = max(d, abs(i / len(xs) - j / len(ys)))
    return d


def ks_critical(n: int, m: int, alpha: float = 0.01) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


@dataclass
class PairStats:
    tenant: str
    champion_version: str
    challenger_version: str
    n: int = 0
    agree: int = 0
    flips: dict[tuple[str, str], int] = field(default_factory=dict)
    mean_champion: float = 0.0
    mean_challenger: float = 0.0
    ks: float = 0.0
    ks_critical: float = 0.0
    champion_ms_per_window: float = 0.0
    challenger_ms_per_window: float = 0.0

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else 0.0

    @property
    def shifted(self) -> bool:
        return self.n > 0 and self.ks > self.ks_critical

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "n": self.n,
            "agreement": self.agreement,
            "flips": {f"{a}->{b}": c for (a, b), c in sorted(self.flips.items())},
            "mean_score_champion": self.mean_champion,
            "mean_score_challenger": self.mean_challenger,
            "ks": self.ks,
            "ks_critical_alpha_0.01": self.ks_critical,
            "score_distribution_shifted": self.shifted,
            "champion_ms_per_window": self.champion_ms_per_window,
            "challenger_ms_per_window": self.challenger_ms_per_window,
        }


def compare(rows: Iterable[ShadowRow], alpha: float = 0.01) -> list[PairStats]:
    """One PairStats per (tenant, champion version, challenger version), plus an `*` tenant row
    over all tenants of each version pair."""
    groups: dict[tuple[str, str, str], list[ShadowRow]] = defaultdict(list)
    for row in rows:
        groups[(row.tenant, row.champion_version, row.challenger_version)].append(row)
        groups[("*", row.champion_version, row.challenger_version)].append(row)
    out: list[PairStats] = []
    for (tenant, champion, challenger), items in sorted(groups.items()):
        stats = PairStats(tenant, champion, challenger, n=len(items))
        for r in items:
            stats.agree += r.champion_label == r.challenger_label
            stats.flips[(r.champion_label, r.challenger_label)] = (
                stats.flips.get((r.champion_label, r.challenger_label), 0) + 1
            )
        a = [r.champion_score for r in items]
        b = [r.challenger_score for r in items]
        stats.mean_champion = sum(a) / len(a)
        stats.mean_challenger = sum(b) / len(b)
        stats.ks = ks_statistic(a, b)
        stats.ks_critical = ks_critical(len(a), len(b), alpha)
        windows = sum(r.windows for r in items) or 1
        stats.champion_ms_per_window = (
            1000 * sum(r.champion_seconds_per_window * r.windows for r in items) / windows
        )
        stats.challenger_ms_per_window = (
            1000 * sum(r.challenger_seconds_per_window * r.windows for r in items) / windows
        )
        out.append(stats)
    return out
