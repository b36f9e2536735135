"""`audioguard report tenant T --month M`: the HTML opened in a real headless Chromium (Debian's),
which finds the month's numbers, and the CSV with the same per-day rows."""

from __future__ import annotations

import csv
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reporting.records import row_for
from reporting.store import ReportingStore, migrate_store
from services.cli import main
from tests.support.reporting import verdict_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _seed(url: str) -> None:
    migrate_store(url)
    store = ReportingStore(url)
    rows = []
    for i in range(45):  # 45 uploads over 3 days of November, 15 synthetic; one in December
        when = datetime(2026, 11, 1 + i % 3, 12, i, tzinfo=UTC)
        score = 0.9 if i % 3 == 0 else 0.1
        value = verdict_bytes("acme", f"k{i}", score, processed_at=when)
        rows.append(row_for("audioguard.verdicts.acme", 0, i, value, []))
    rows.append(row_for("audioguard.verdicts.acme", 0, 99, verdict_bytes(
        "acme", "december", 0.1, processed_at=datetime(2026, 12, 1, tzinfo=UTC)), []))  # fmt: skip
    rows.append(row_for("audioguard.verdicts.globex", 0, 0, verdict_bytes("globex", "other", 0.1), []))
    store.write(rows)
    store.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (APT_PACKAGES in the Makefile)")
def test_the_monthly_report_renders_in_chromium_with_its_numbers(postgres_url: str, tmp_path: Path) -> None:
    _seed(postgres_url)
    code = main(["report", "tenant", "acme", "--month", "2026-11", "--out", str(tmp_path),
                 "--database-url", postgres_url])  # fmt: skip
    assert code == 0
    page = tmp_path / "audioguard-acme-2026-11.html"
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'chromium'}"]  # fmt: skip
    dom = subprocess.run(
        [*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert '<strong id="uploads">45</strong>' in dom
    assert '<strong id="synthetic">15</strong>' in dom and '<strong id="bona-fide">30</strong>' in dom
    assert '<strong id="audio-hours">0.03</strong>' in dom  # 45 x 2 s
    assert dom.count("data:image/png;base64,") == 2
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1000,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "audioguard-acme-2026-11.csv").open() as handle:
        days = list(csv.DictReader(handle))
    assert [d["day"] for d in days] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    # shares as a person reads them, in the CSV and the page (numeric columns once read "0E-20")
    assert {d["share_synthetic"] for d in days} <= {"0.000", "0.333", "0.667", "1.000"}
    assert "E-" not in dom
    assert sum(int(d["uploads"]) for d in days) == 45


def test_a_bad_month_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["report", "tenant", "acme", "--month", "2026-13"])
    assert caught.value.code == 2
    assert "expected YYYY-MM" in capsys.readouterr().err
