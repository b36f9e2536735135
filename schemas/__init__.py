"""Public contracts of audioguard. See `_contracts` for the rules they follow."""

from __future__ import annotations

import json
from pathlib import Path

from schemas._contracts import (
    DEAD_LETTER_SCHEMA_VERSION,
    SCHEMA_MAJOR,
    SCHEMA_VERSION,
    TENANT_PATTERN,
    VERDICT_SCHEMA_VERSION,
    AudioArrival,
    DeadLetter,
    ErrorCategory,
    Feedback,
    Label,
    ModelInfo,
    SourceCoordinates,
    SpeechSummary,
    SyntheticSpan,
    Timings,
    Verdict,
    WindowScore,
    WindowSummary,
    json_schemas,
    validate_tenant,
)

SCHEMA_DIR = Path(__file__).parent

__all__ = [
    "DEAD_LETTER_SCHEMA_VERSION",
    "SCHEMA_DIR",
    "SCHEMA_MAJOR",
    "SCHEMA_VERSION",
    "TENANT_PATTERN",
    "VERDICT_SCHEMA_VERSION",
    "validate_tenant",
    "AudioArrival",
    "DeadLetter",
    "ErrorCategory",
    "Feedback",
    "Label",
    "ModelInfo",
    "SourceCoordinates",
    "SpeechSummary",
    "SyntheticSpan",
    "Timings",
    "Verdict",
    "WindowScore",
    "WindowSummary",
    "export_json_schemas",
    "json_schemas",
]


def export_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every contract's JSON Schema under `directory`; returns the files written."""
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
