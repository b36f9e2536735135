"""Verdict 1.1 is a minor version: a 1.0 reader still validates it, a 1.1 reader reads a 1.0 verdict.

`verdict-1.0.schema.json` beside this file is the schema exported before 1.1 (reason, speech,
timeline, synthetic_span), kept as the stand-in for every consumer still on 1.x.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import numpy as np

from schemas import SCHEMA_DIR, VERDICT_SCHEMA_VERSION, ModelInfo, Timings, Verdict, WindowSummary
from services.detector._decision import decide

OLD = json.loads((Path(__file__).with_name("verdict-1.0.schema.json")).read_text())
NEW = json.loads((SCHEMA_DIR / "verdict.schema.json").read_text())


def verdict_1_1() -> Verdict:
    scores = np.array([0.1, 0.95, 0.9, 0.2])
    decision = decide(
        scores, 0.5, 0.05, np.array([1.0, 0.9, 0.8, 0.0]), window_seconds=4.0, duration_seconds=15.0
    )
    now = datetime.now(UTC)
    return Verdict(
        idempotency_key="k1",
        tenant_id="acme",
        content_id="c1",
        event_id="e1",
        label=decision.label,
        score=decision.score,
        threshold=decision.threshold,
        windows=WindowSummary(
            count=decision.window_count,
            mean=decision.mean,
            minimum=decision.minimum,
            maximum=decision.maximum,
            fraction_over_threshold=decision.fraction_over_threshold,
        ),
        duration_seconds=15.0,
        model=ModelInfo(name="m", version="3.0.0", checksum="0" * 64),
        timings=Timings(queued_seconds=0.0, scoring_seconds=0.1, end_to_end_seconds=1.0),
        processed_at=now,
        attempt=1,
        **decision.verdict_fields(),
    )


def test_a_1_1_verdict_validates_against_the_1_0_schema_and_its_own() -> None:
    doc = json.loads(verdict_1_1().model_dump_json())
    assert doc["schema_version"] == VERDICT_SCHEMA_VERSION == "1.1"
    assert len(doc["timeline"]) == 4 and doc["timeline"][3] == {
        "start_seconds": 12.0,
        "end_seconds": 15.0,
        "score": 0.2,
        "speech": 0.0,
    }
    assert doc["synthetic_span"] == {"start_seconds": 4.0, "end_seconds": 12.0, "score": 0.925, "windows": 2}
    jsonschema.validate(doc, NEW)
    jsonschema.validate(doc, OLD)


def test_a_1_0_verdict_reads_as_1_1_without_the_new_fields() -> None:
    doc = json.loads(verdict_1_1().model_dump_json())
    for field in ("reason", "speech", "timeline", "synthetic_span"):
        doc.pop(field)
    doc["schema_version"] = "1.0"
    jsonschema.validate(doc, OLD)
    jsonschema.validate(doc, NEW)
    old = Verdict.model_validate(doc)
    assert (old.schema_version, old.reason, old.timeline, old.synthetic_span) == ("1.0", None, None, None)


def test_the_1_0_fields_are_unchanged() -> None:
    assert set(OLD["properties"]) < set(NEW["properties"])
    assert set(NEW["properties"]) - set(OLD["properties"]) == {
        "reason",
        "speech",
        "timeline",
        "synthetic_span",
    }
    assert OLD["required"] == NEW["required"]
