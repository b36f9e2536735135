"""The file corpus tests/fuzz/events/ through the real worker on the in-memory transport: every
kind gets the outcome its manifest names, the worker stays up after each, and no dead letter's
message carries an object address. `scripts/hostile_table.py` prints the same run as a table."""

from __future__ import annotations

from pathlib import Path

from tests.support.corpus import ANSWERS, load_corpus, markdown, run_in_memory


def test_every_corpus_kind_gets_its_outcome_and_the_worker_stays_up(tmp_path: Path) -> None:
    kinds = load_corpus()
    assert len(kinds) >= 37  # issue 15's seven and at least 30 of our own
    rows = run_in_memory(kinds, tmp_path)
    assert [row for row in rows if not row.ok] == [], markdown([row for row in rows if not row.ok])
    assert all(row.worker_up for row in rows)
    assert {row.outcome for row in rows} - set(ANSWERS), "the corpus must hold dead letters too"
