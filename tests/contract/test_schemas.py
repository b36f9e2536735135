"""The committed JSON Schema files are exactly what the pydantic models export."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import SCHEMA_DIR, AudioArrival, json_schemas


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_exported_files_match_the_models(name):
    committed = json.loads((SCHEMA_DIR / name).read_text())
    assert committed == json_schemas()[name], f"{name} drifted: run `audioguard schemas export` and commit"


def arrival(**changes):  # type: ignore[no-untyped-def]
    doc = {
        "schema_version": "1.0",
        "event_id": "e1",
        "idempotency_key": "k1",
        "tenant_id": "acme",
        "content_id": "c1",
        "audio_uri": "file:///a.wav",
        "submitted_at": datetime.now(UTC).isoformat(),
    }
    doc.update(changes)
    return doc


def test_minor_versions_and_unknown_fields_are_accepted():
    parsed = AudioArrival.model_validate(arrival(schema_version="1.7", new_field="ignored"))
    assert parsed.schema_version == "1.7"
    jsonschema.validate(
        arrival(new_field=1), json.loads((SCHEMA_DIR / "audio_arrival.schema.json").read_text())
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"schema_version": "2.0"},
        {"tenant_id": "ACME"},
        {"submitted_at": "2026-01-01T00:00:00"},
        {"sha256": "zz"},
        {"priority": 10},
        {"event_id": ""},
    ],
)
def test_invalid_arrivals_are_rejected(changes):
    with pytest.raises(ValidationError):
        AudioArrival.model_validate(arrival(**changes))
