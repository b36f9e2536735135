"""The reporting store on the local PostgreSQL: idempotent batches, re-scores, dead letters,
feedback and its EER, metering written once, and records that do not validate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from reporting.commands import model_eer, wilson
from reporting.records import row_for
from reporting.store import (
    ReportingStore,
    load_feedback,
    migrate_store,
    parse_feedback_csv,
    query,
)
from services.detector.training.metrics import eer
from services.errors import PoisonMessage, RetryableError
from tests.support.reporting import dead_letter, verdict_bytes

T = "acme"
VT = f"audioguard.verdicts.{T}"


def _count(url: str, sql: str) -> int:
    return int(query(url, sql)[1][0][0])


def test_batches_are_idempotent_and_a_rescore_is_its_own_row(postgres_url: str) -> None:
    assert migrate_store(postgres_url) == ["0001_reporting.sql"]
    assert migrate_store(postgres_url) == []
    store = ReportingStore(postgres_url, chunk_rows=7)
    rows = [row_for(VT, 0, i, verdict_bytes(T, f"k{i}", 0.1), []) for i in range(20)]
    assert store.write(rows).inserted == 20
    # the same batch again (a crash before the commit), plus a duplicate inside one batch
    assert store.write(rows + rows[:3]).inserted == 0
    rescore = row_for(VT, 0, 99, verdict_bytes(T, "k0", 0.9, model_version="2.0.0"), [])
    assert store.write([rescore]).inserted == 1
    assert _count(postgres_url, "SELECT count(*) FROM reporting.verdicts") == 21
    assert _count(postgres_url, "SELECT count(*) FROM reporting.verdicts WHERE idempotency_key = 'k0'") == 2
    value, headers = dead_letter(T, "bad-1", reason="undecodable_audio")
    letter = row_for(f"audioguard.dlq.{T}", 0, 5, value, headers)
    assert store.write([letter, letter]).inserted == 1
    names, daily = query(postgres_url, "SELECT * FROM reporting.tenant_daily")
    day = dict(zip(names, daily[0], strict=True))
    assert (day["uploads"], day["dead_letters"]) == (20, 1)
    assert day["dead_letters_by_reason"] == {"undecodable_audio": 1}
    store.close()


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    [
        (VT, b"{not json", "schema_violation"),
        (VT, verdict_bytes("globex", "k1", 0.2), "tenant_mismatch"),
        (VT, b"", "empty_record"),
        ("audioguard.arrivals.acme", b"{}", "unexpected_topic"),
        (f"audioguard.dlq.{T}", b"payload", "bad_dead_letter"),
        (f"audioguard.feedback.{T}", b'{"idempotency_key": "k", "tenant_id": "acme"}', "schema_violation"),
    ],
)
def test_invalid_records_are_poison_with_a_reason(topic: str, value: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessage) as caught:
        row_for(topic, 0, 0, value, [])
    assert caught.value.reason == reason


def test_feedback_eer_matches_the_detector_metric_and_metering_is_written_once(
    postgres_url: str, tmp_path: Path
) -> None:
    migrate_store(postgres_url)
    rng = np.random.default_rng(3)
    bona, synth = rng.beta(2, 5, 60), rng.beta(5, 2, 60)
    hour = datetime(2026, 11, 3, 10, 15, tzinfo=UTC)
    rows, lines = [], ["tenant_id,idempotency_key,truth,decided_at"]
    for i, score in enumerate(np.concatenate([bona, synth])):
        key = f"u{i}"
        rows.append(row_for(VT, 0, i, verdict_bytes(T, key, float(score), processed_at=hour), []))
        lines.append(f"{T},{key},{'bona_fide' if i < 60 else 'synthetic'},2026-11-04T00:00:00+00:00")
    lines.append(f"{T},,synthetic,")
    store = ReportingStore(postgres_url)
    store.write(rows)
    csv_file = tmp_path / "feedback.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    decisions, refused = parse_feedback_csv(csv_file)
    assert len(decisions) == 120 and [line for line, _ in refused] == [122]
    assert load_feedback(postgres_url, decisions, source="test") == 120
    assert model_eer(postgres_url, "1.0.0") == pytest.approx(eer(bona, synth)[0])
    names, versions = query(postgres_url, "SELECT * FROM reporting.model_versions")
    view = dict(zip(names, versions[0], strict=True))
    assert view["with_feedback"] == 120
    assert view["true_positives"] + view["false_negatives"] == 60
    low, high = wilson(50, 60)
    assert low < 50 / 60 < high

    assert store.close_metering_hours(hour + timedelta(hours=2)) == 1
    late = row_for(VT, 0, 500, verdict_bytes(T, "late", 0.3, processed_at=hour), [])
    store.write([late])
    assert store.close_metering_hours(hour + timedelta(hours=3)) == 0  # written once
    _, metering = query(postgres_url, "SELECT uploads, audio_seconds_scored FROM reporting.metering_hourly")
    assert metering == [(120, pytest.approx(240.0))]
    store.close()


def test_an_unreachable_database_is_retryable() -> None:
    store = ReportingStore("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(RetryableError):
        store.write([row_for(VT, 0, 0, verdict_bytes(T, "k", 0.1), [])])


def test_report_commands_migrate_load_feedback_and_print_the_model_view(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # rich's table width
    assert main(["report", "migrate", "--database-url", postgres_url]) == 0
    store = ReportingStore(postgres_url)
    store.write([row_for(VT, 0, i, verdict_bytes(T, f"k{i}", i / 10), []) for i in range(10)])
    store.close()
    csv_file = tmp_path / "decisions.csv"
    csv_file.write_text(
        "tenant_id,idempotency_key,truth,moderator\n"
        + "".join(f"{T},k{i},{'synthetic' if i >= 5 else 'bona_fide'},mod-1\n" for i in range(10))
        + f"{T},k1,maybe,mod-2\n"
    )
    assert main(["report", "feedback", "load", str(csv_file), "--database-url", postgres_url]) == 1
    out = capsys.readouterr().out
    assert "feedback loaded: 10 decisions" in out and "line 12 refused" in out
    assert main(["report", "model", "--database-url", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "aasist-lite 1.0.0" in out and "0.0000" in out  # perfectly separated: EER 0


def test_report_commands_without_a_database_say_how_to_get_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli import main

    monkeypatch.delenv("AUDIOGUARD_DATABASE__URL", raising=False)
    monkeypatch.delenv("AUDIOGUARD_CONFIG", raising=False)
    assert main(["report", "model"]) == 2
    assert "database.url" in capsys.readouterr().err
