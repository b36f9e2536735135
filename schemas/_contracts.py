"""The wire contracts: AudioArrival (in), Verdict (out), DeadLetter (the failure envelope).

These pydantic models are the source of truth; `schemas/*.schema.json` are exported from
them (`audioguard schemas export`) and a test fails when the two drift. Every contract is
versioned by ``schema_version`` ("MAJOR.MINOR"): an unknown major version is rejected
(the arrival goes to the dead-letter topic), unknown fields are ignored so producers can
add fields in a minor version without breaking workers.

Used only at the edges (decoding an arrival, encoding a verdict or a dead letter): inside
the pipeline the data travels in frozen dataclasses.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SCHEMA_MAJOR = 1
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.0"
#: DeadLetter 1.1 added the payload_* fields (a payload too large for the DLQ record is stored
#: elsewhere or cut); a 1.0 reader ignores them, a 1.1 reader takes a 1.0 letter as whole
DEAD_LETTER_SCHEMA_VERSION = f"{SCHEMA_MAJOR}.1"
#: Verdict 1.1 added reason, speech, timeline and synthetic_span (all optional): a 1.0 reader
#: ignores them, a 1.1 reader takes a 1.0 verdict (stored before they existed) as whole
VERDICT_SCHEMA_VERSION = f"{SCHEMA_MAJOR}.1"

TENANT_PATTERN = r"^[a-z0-9-]{1,40}$"
TenantId = Annotated[str, Field(pattern=TENANT_PATTERN, description="lowercase [a-z0-9-]{1,40}")]


def validate_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant id, else ValueError (topic names and settings use it)."""
    if not re.fullmatch(TENANT_PATTERN[1:-1], tenant):
        raise ValueError(f"invalid tenant id {tenant!r}: must match {TENANT_PATTERN}")
    return tenant


Label = Literal["synthetic", "bona_fide", "inconclusive"]
ErrorCategory = Literal["poison", "retries_exhausted", "fatal"]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_max_length=8192)

    schema_version: str = Field(
        default=SCHEMA_VERSION,
        pattern=r"^\d+\.\d+$",
        description=f"MAJOR.MINOR; this worker reads major {SCHEMA_MAJOR} only",
    )

    @field_validator("schema_version")
    @classmethod
    def _known_major(cls, value: str) -> str:
        major = int(value.split(".", 1)[0])
        if major != SCHEMA_MAJOR:
            raise ValueError(f"unknown major schema version {major} (this worker reads {SCHEMA_MAJOR})")
        return value


class AudioArrival(_Contract):
    """A platform's event: one audio upload is ready to be checked."""

    event_id: str = Field(min_length=1, max_length=200)
    idempotency_key: str = Field(
        min_length=1,
        max_length=200,
        description="The same upload must always carry the same key; it names the verdict",
    )
    tenant_id: TenantId
    content_id: str = Field(min_length=1, max_length=200)
    audio_uri: str = Field(min_length=1, max_length=2048, description="file://, s3:// or gs://")
    content_type: str | None = Field(default=None, max_length=100)
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="hex; upper case is read as lower case"
    )
    byte_size: int | None = Field(default=None, ge=0)
    duration_seconds: float | None = Field(default=None, ge=0)
    submitted_at: AwareDatetime
    priority: int = Field(default=0, ge=0, le=9, description="0 (default) .. 9 (first within the tenant)")
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower_hex(cls, value: Any) -> Any:
        # the same digest in upper case is the same digest: harmless, so normalised, not refused
        return value.lower() if isinstance(value, str) else value


class WindowSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = Field(ge=0)
    mean: float
    minimum: float
    maximum: float
    fraction_over_threshold: float = Field(ge=0, le=1)


class SpeechSummary(BaseModel):
    """How much of the audio the detector's voice-activity check found to be speech."""

    model_config = ConfigDict(frozen=True)

    fraction: float = Field(ge=0, le=1, description="share of the analysed audio that is speech")
    seconds: float = Field(ge=0, description="seconds of speech found")


class WindowScore(BaseModel):
    """One analysis window of the timeline."""

    model_config = ConfigDict(frozen=True)

    start_seconds: float = Field(ge=0)
    end_seconds: float = Field(ge=0)
    score: float = Field(ge=0, le=1, description="this window's score; higher = more likely synthetic")
    speech: float | None = Field(default=None, ge=0, le=1, description="share of the window that is speech")


class SyntheticSpan(BaseModel):
    """The consecutive speech windows most likely synthetic (largest total score over the threshold)."""

    model_config = ConfigDict(frozen=True)

    start_seconds: float = Field(ge=0)
    end_seconds: float = Field(ge=0)
    score: float = Field(ge=0, le=1, description="mean score of the span's windows")
    windows: int = Field(ge=1)


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    checksum: str = Field(description="sha256 of the weights file")


class Timings(BaseModel):
    model_config = ConfigDict(frozen=True)

    queued_seconds: float = Field(ge=0, description="from receipt by the worker to the start of scoring")
    scoring_seconds: float = Field(ge=0, description="model time of the batch the upload rode in")
    end_to_end_seconds: float = Field(description="from submitted_at to the verdict")


class Verdict(_Contract):
    """The answer for one upload, keyed by its idempotency key.

    1.1 (minor: every new field optional, a 1.0 reader ignores them): ``reason`` says why a
    label is inconclusive (``not_speech``, ``too_little_speech``: the voice-activity check found
    too little speech for any score to mean something; ``near_threshold``); ``speech``, the
    voice-activity summary; ``timeline``, every window's (start, end, score, speech); and
    ``synthetic_span``, where in the clip the synthetic part most likely is.
    """

    schema_version: str = Field(
        default=VERDICT_SCHEMA_VERSION,
        pattern=r"^\d+\.\d+$",
        description=f"MAJOR.MINOR; this worker reads major {SCHEMA_MAJOR} only",
    )

    idempotency_key: str
    tenant_id: TenantId
    content_id: str
    event_id: str
    # what the key was first used for: a later arrival with the same key and other content is
    # an idempotency conflict (docs/idempotency.md); absent from verdicts stored before these fields existed
    audio_uri: str | None = Field(default=None, description="the arrival's audio_uri")
    sha256: str | None = Field(default=None, description="the arrival's sha256, when it gave one")
    label: Label
    score: float = Field(ge=0, le=1, description="probability-like; higher = more likely synthetic")
    threshold: float = Field(ge=0, le=1, description="calibrated decision threshold the label used")
    windows: WindowSummary
    duration_seconds: float = Field(ge=0, description="audio analysed")
    model: ModelInfo
    timings: Timings
    processed_at: AwareDatetime
    attempt: int = Field(ge=1, description="delivery attempt that produced this verdict")
    reason: str | None = Field(
        default=None,
        max_length=100,
        description="why the label is inconclusive: not_speech, too_little_speech or near_threshold",
    )
    speech: SpeechSummary | None = Field(default=None, description="voice-activity summary (1.1)")
    timeline: list[WindowScore] | None = Field(
        default=None, max_length=100_000, description="every analysis window, in order (1.1)"
    )
    synthetic_span: SyntheticSpan | None = Field(
        default=None,
        description="the span most likely synthetic; absent when no speech window reaches the threshold",
    )


class SourceCoordinates(BaseModel):
    """Where the original message came from, in its transport's terms."""

    model_config = ConfigDict(frozen=True)

    #: a transport name of consumers.transports.registry (a test keeps the two equal)
    transport: Literal["kafka", "pubsub", "kinesis", "memory"]
    topic: str
    partition: int | None = None
    offset: int | None = None
    timestamp: datetime | None = None
    ack_id: str | None = None
    message_id: str | None = None
    shard_id: str | None = None
    sequence_number: str | None = None


class DeadLetter(_Contract):
    """Why an arrival could not become a verdict.

    On Kafka and Pub/Sub the dead-lettered message body is the original payload, byte for
    byte, and these fields travel as headers / attributes (`dlq.envelope`). Kinesis has no
    headers, so there the record is this model as JSON with ``payload_b64`` set.

    A payload that would not fit the DLQ's record limit is not carried whole
    (``payload_truncated``): the record holds only its first bytes, and the full payload is
    at ``payload_uri`` when the worker could store it (content-addressed by its sha256).
    """

    schema_version: str = Field(
        default=DEAD_LETTER_SCHEMA_VERSION,
        pattern=r"^\d+\.\d+$",
        description=f"MAJOR.MINOR; this worker reads major {SCHEMA_MAJOR} only",
    )

    tenant_id: str
    error_class: str
    error_message: str = Field(max_length=4000)
    reason: str
    category: ErrorCategory
    stack_digest: str = Field(description="sha1 of the traceback's frames, to group identical failures")
    attempt: int = Field(ge=1)
    source: SourceCoordinates
    first_seen_at: AwareDatetime
    last_failed_at: AwareDatetime
    worker_id: str
    model_version: str
    replay_count: int = Field(default=0, ge=0)
    replay_id: str | None = None
    payload_size: int | None = Field(default=None, ge=0, description="the original payload's length in bytes")
    payload_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the original payload"
    )
    payload_truncated: bool = Field(
        default=False,
        description="the record carries only the payload's first bytes (it exceeded the DLQ's record limit)",
    )
    payload_uri: str | None = Field(
        default=None,
        max_length=2048,
        description="where the full payload is stored (file:// or s3://) when it is not in the record",
    )
    payload_b64: str | None = None


class Feedback(_Contract):
    """A moderator's decision on one upload (topic ``audioguard.feedback.<tenant>``, key: the
    idempotency key): the ground truth the reporting store joins to verdicts. A later decision
    for the same upload replaces an earlier one."""

    idempotency_key: str = Field(min_length=1, max_length=200)
    tenant_id: TenantId
    truth: Literal["synthetic", "bona_fide"]
    decided_at: AwareDatetime
    moderator: str | None = Field(default=None, max_length=200)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The exported JSON Schema of each contract, by file name."""
    return {
        "audio_arrival.schema.json": AudioArrival.model_json_schema(),
        "verdict.schema.json": Verdict.model_json_schema(),
        "dead_letter.schema.json": DeadLetter.model_json_schema(),
        "feedback.schema.json": Feedback.model_json_schema(),
    }
