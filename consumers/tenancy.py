"""Tenants: their names on each transport and the policy the worker applies to them.

The tenant of a message is the tenant of the topic / subscription / stream it came from,
never what the payload claims. All topic naming goes through this module so that moving
the long tail of small tenants onto a shared topic later is a change here, not a rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas import validate_tenant

__all__ = [
    "KAFKA_ARRIVALS_PATTERN",
    "TenantPolicy",
    "kafka_topic",
    "kinesis_stream",
    "pubsub_subscription",
    "pubsub_topic",
    "tenant_of_kafka_topic",
    "validate_tenant",
]

_KAFKA_ARRIVALS_RE = re.compile(r"^audioguard\.arrivals\.([a-z0-9-]{1,40})$")

#: librdkafka treats a subscription starting with "^" as a regex; new matching topics are
#: picked up on the next metadata refresh (topic.metadata.refresh.interval.ms).
KAFKA_ARRIVALS_PATTERN = r"^audioguard\.arrivals\.[a-z0-9-]{1,40}$"


def kafka_topic(kind: str, tenant: str, tier: int | None = None) -> str:
    """`audioguard.<kind>.<tenant>`; retry tiers are `audioguard.retry.<tier>.<tenant>`."""
    validate_tenant(tenant)
    if kind == "retry":
        if tier is None:
            raise ValueError("a retry topic needs a tier")
        return f"audioguard.retry.{tier}.{tenant}"
    if kind not in ("arrivals", "verdicts", "dlq"):
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"audioguard.{kind}.{tenant}"


def tenant_of_kafka_topic(topic: str) -> str | None:
    """The tenant an arrivals, verdicts, dlq or retry topic belongs to, or None."""
    match = re.match(r"^audioguard\.(?:arrivals|verdicts|dlq|retry\.\d+)\.([a-z0-9-]{1,40})$", topic)
    return match.group(1) if match else None


def pubsub_topic(kind: str, tenant: str) -> str:
    """Pub/Sub topic ids: `arrivals-<tenant>`, `verdicts-<tenant>`, `dlq-<tenant>`."""
    validate_tenant(tenant)
    if kind not in ("arrivals", "verdicts", "dlq"):
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{kind}-{tenant}"


def pubsub_subscription(tenant: str, kind: str = "arrivals") -> str:
    """`arrivals-<tenant>-workers` (and `dlq-<tenant>-replay` for the DLQ tool)."""
    suffix = "workers" if kind == "arrivals" else "replay"
    return f"{pubsub_topic(kind, tenant)}-{suffix}"


def kinesis_stream(kind: str, tenant: str) -> str:
    """`audioguard-<kind>-<tenant>` for arrivals, verdicts and dlq."""
    validate_tenant(tenant)
    if kind not in ("arrivals", "verdicts", "dlq"):
        raise ValueError(f"unknown stream kind {kind!r}")
    return f"audioguard-{kind}-{tenant}"


@dataclass(frozen=True)
class TenantPolicy:
    """What one tenant may use of a worker. Frozen; handed to the runner, never global.

    weight              share of batch capacity under contention (deficit round robin)
    max_in_flight       events admitted but not yet acked
    max_in_flight_audio_seconds
                        seconds of decoded audio admitted but not yet acked
    rate_per_second     optional token-bucket rate of admitted events (None = unlimited)
    burst               token-bucket depth
    """

    weight: float = 1.0
    max_in_flight: int = 64
    max_in_flight_audio_seconds: float = 1200.0
    rate_per_second: float | None = None
    burst: int = 10

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError("weight must be positive")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
