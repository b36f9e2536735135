"""deploy/grafana/reporting-dashboard.json: every panel's SQL runs against the migrated reporting
store (Grafana's macros expanded the way its PostgreSQL data source does) and returns rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

from reporting.records import row_for
from reporting.store import ReportingStore, migrate_store, query
from tests.support.reporting import dead_letter, verdict_bytes

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "reporting-dashboard.json"


def _expand(sql: str) -> str:
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)", r"\1 BETWEEN now() - interval '30 days' AND now() + interval '1 day'", sql
    )
    return sql.replace("$tenant", "'acme'")


def test_every_panel_query_runs_and_finds_the_data(postgres_url: str) -> None:
    migrate_store(postgres_url)
    store = ReportingStore(postgres_url)
    value, headers = dead_letter("acme", "bad")
    rows = [
        row_for("audioguard.verdicts.acme", 0, i, verdict_bytes("acme", f"k{i}", i / 10), [])
        for i in range(10)
    ]
    store.write([*rows, row_for("audioguard.dlq.acme", 0, 0, value, headers)])
    store.close()
    query(postgres_url, "SELECT reporting.close_metering_hours(now() + interval '2 hours')")
    dashboard = json.loads(DASHBOARD.read_text())
    (tenants,) = [v for v in dashboard["templating"]["list"] if v["name"] == "tenant"]
    assert query(postgres_url, tenants["query"])[1] == [("acme",)]
    for panel in dashboard["panels"]:
        (target,) = panel["targets"]
        _, rows = query(postgres_url, _expand(target["rawSql"]))
        assert rows, f"panel {panel['title']!r} found nothing"
