#!/usr/bin/env python
"""Run every kind of the hostile-event corpus (tests/fuzz/events/) through a real worker and
print the reviewer's markdown table: kind, bytes, expected, outcome, worker still up.

    .venv/bin/python scripts/hostile_table.py            # the table on stdout; exit 1 on a mismatch

The worker is the production pipeline on the in-memory transport with the null scorer (what
the audio is scored as does not matter here; fetching, decoding and every check do run). The
same corpus runs over a real Kafka broker in tests/integration/test_poison_corpus.py.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.corpus import load_corpus, markdown, run_in_memory  # noqa: E402


def main() -> int:
    # the worker logs every dead letter: here the table says it, once
    logging.disable(logging.WARNING)
    kinds = load_corpus()
    with tempfile.TemporaryDirectory(prefix="hostile-") as workdir:
        rows = run_in_memory(kinds, Path(workdir))
    print(markdown(rows))
    bad = [row for row in rows if not row.ok]
    print(
        f"\n{len(rows)} kinds, {len(rows) - len(bad)} as expected, worker up after every one: "
        f"{'yes' if all(r.worker_up for r in rows) else 'NO'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
