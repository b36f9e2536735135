"""Tenants: their names on each transport and the policy the worker applies to them.

The tenant of a message is the tenant of the topic / subscription / stream it came from,
never what the payload claims. All topic naming goes through this module.

The long tail of small tenants may share one arrivals topic, `audioguard.arrivals._shared`
(Kafka and the in-memory transport). There the topic proves nothing, so the tenant is the
record's `ag-tenant` header, believed only with a valid `ag-tenant-signature`:
HMAC-SHA256(that tenant's secret, tenant + "\n" + idempotency key + "\n" + hex sha256 of the
payload). Only the API layer (or that tenant's own producer) holds the secret. Anything else
on the shared topic is dead-lettered to `audioguard.dlq._shared` with its reason
(`SharedTopic.resolve`). `tenant_of_record` is the one lookup both sources use.

A paused tenant's shared records may be spilled to its overflow topic
`audioguard.overflow.<tenant>` (consumers.overflow), consumed like a dedicated topic. The
overflow topic proves nothing either: its records keep their signed headers and are
verified again, and must be signed for the topic's own tenant.
"""

from __future__ import annotations

import hmac
import json
import re
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas import validate_tenant
from services.platform import SHARED_ARRIVALS_TOPIC, SIGNATURE_HEADER, TENANT_HEADER, sign_tenant

__all__ = [
    "KAFKA_ARRIVALS_PATTERN",
    "KAFKA_OVERFLOW_PATTERN",
    "SHARED",
    "SHARED_ARRIVALS_TOPIC",
    "SIGNATURE_HEADER",
    "TENANT_HEADER",
    "SharedTopic",
    "TenantHold",
    "shared_topic",
    "sign_tenant",
    "tenant_of_record",
    "TenantPolicy",
    "kafka_topic",
    "overflow_topic",
    "tenant_of_overflow_topic",
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

#: a shared tenant's overflow topic (consumers.overflow); "overflow", not "arrivals", so the
#: dedicated-arrivals pattern above never takes it for a tenant's own arrivals topic
KAFKA_OVERFLOW_PATTERN = r"^audioguard\.overflow\.[a-z0-9-]{1,40}$"
_KAFKA_OVERFLOW_RE = re.compile(r"^audioguard\.overflow\.([a-z0-9-]{1,40})$")


#: the pseudo-tenant of the shared topic; not a valid tenant id, so no tenant can take it
SHARED = "_shared"
assert f"audioguard.arrivals.{SHARED}" == SHARED_ARRIVALS_TOPIC


def kafka_topic(kind: str, tenant: str, tier: int | None = None) -> str:
    """`audioguard.<kind>.<tenant>`; retry tiers are `audioguard.retry.<tier>.<tenant>`.
    `SHARED` has an arrivals and a dlq topic only."""
    if tenant == SHARED and kind in ("arrivals", "dlq"):
        return f"audioguard.{kind}.{SHARED}"
    validate_tenant(tenant)
    if kind == "retry":
        if tier is None:
            raise ValueError("a retry topic needs a tier")
        return f"audioguard.retry.{tier}.{tenant}"
    if kind not in ("arrivals", "verdicts", "dlq"):
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"audioguard.{kind}.{tenant}"


def overflow_topic(tenant: str) -> str:
    """`audioguard.overflow.<tenant>`: where a paused shared tenant's records are spilled."""
    validate_tenant(tenant)
    return f"audioguard.overflow.{tenant}"


def tenant_of_overflow_topic(topic: str) -> str | None:
    match = _KAFKA_OVERFLOW_RE.match(topic)
    return match.group(1) if match else None


def tenant_of_kafka_topic(topic: str) -> str | None:
    """The tenant an arrivals, overflow, verdicts, dlq or retry topic belongs to, or None;
    SHARED for the shared arrivals and dlq topics (a shared record's tenant is
    `tenant_of_record`'s). Pausing a tenant pauses the partitions this maps to it."""
    if topic in (SHARED_ARRIVALS_TOPIC, f"audioguard.dlq.{SHARED}"):
        return SHARED
    match = re.match(r"^audioguard\.(?:arrivals|overflow|verdicts|dlq|retry\.\d+)\.([a-z0-9-]{1,40})$", topic)
    return match.group(1) if match else None


@dataclass(frozen=True)
class SharedTopic:
    """Who may arrive on the shared topic, and the secrets that prove it."""

    tenants: frozenset[str] = frozenset()
    secrets: Mapping[str, bytes] = field(default_factory=dict)

    def resolve(
        self, headers: Sequence[tuple[str, bytes]], value: bytes
    ) -> tuple[str, tuple[str, str] | None]:
        """(tenant, None) for a record proven to be that tenant's, else (SHARED, (reason, why))."""

        def reject(reason: str, why: str) -> tuple[str, tuple[str, str] | None]:
            return SHARED, (reason, why)

        found = dict(headers)
        raw_tenant, raw_signature = found.get(TENANT_HEADER), found.get(SIGNATURE_HEADER)
        if raw_tenant is None or raw_signature is None:
            return reject(
                "tenant_unsigned", f"a shared-topic record needs {TENANT_HEADER} and {SIGNATURE_HEADER}"
            )
        try:
            tenant, signature = raw_tenant.decode(), raw_signature.decode()
        except UnicodeDecodeError:
            return reject("tenant_unsigned", "tenant headers are not UTF-8")
        if tenant not in self.tenants:
            return reject("tenant_not_shared", f"tenant {tenant[:60]!r} is not served from the shared topic")
        secret = self.secrets.get(tenant)
        if not secret:
            return reject("tenant_unknown_key", f"no signing secret configured for tenant {tenant!r}")
        try:
            document = json.loads(value)
            key, claimed = document["idempotency_key"], document["tenant_id"]
        except Exception:  # noqa: BLE001 - whatever the payload is, it is only unprovable
            return reject("tenant_unverifiable", "the payload has no readable idempotency_key / tenant_id")
        if not isinstance(key, str) or not hmac.compare_digest(
            sign_tenant(secret, tenant, key, value), signature
        ):
            return reject("tenant_signature", f"bad {SIGNATURE_HEADER} for tenant {tenant!r}")
        if claimed != tenant:
            return reject(
                "tenant_mismatch", f"signed for {tenant!r} but the event claims {str(claimed)[:60]!r}"
            )
        return tenant, None


def shared_topic(tenants: Iterable[str], secrets: Mapping[str, object]) -> SharedTopic | None:
    """The SharedTopic of settings' `shared_tenants` and `tenant_secrets` (SecretStr or str),
    or None when no tenant is shared."""
    names = frozenset(tenants)
    if not names:
        return None

    def raw(secret: object) -> bytes:
        value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        return str(value).encode()

    return SharedTopic(names, {t: raw(secrets[t]) for t in names if t in secrets})


def tenant_of_record(
    topic: str, headers: Sequence[tuple[str, bytes]], value: bytes, shared: SharedTopic | None
) -> tuple[str | None, tuple[str, str] | None]:
    """The one tenant lookup of a consumed arrival: the topic's tenant on a dedicated topic,
    the signed header's on the shared one and on an overflow topic, where it must also be the
    topic's tenant; (None, None) for a topic that is not ours."""
    if topic == SHARED_ARRIVALS_TOPIC:
        return (shared or SharedTopic()).resolve(headers, value)
    owner = tenant_of_overflow_topic(topic)
    if owner is not None:
        tenant, rejection = (shared or SharedTopic()).resolve(headers, value)
        if rejection is None and tenant != owner:
            return SHARED, (
                "tenant_overflow_mismatch",
                f"signed for {tenant!r} on {owner!r}'s overflow topic",
            )
        return tenant, rejection
    return tenant_of_kafka_topic(topic), None


class TenantHold:
    """Records of the shared topic whose tenant is paused, held in order per tenant.

    Pausing a dedicated topic pauses one tenant; pausing the shared topic would pause all of
    its tenants. So the shared topic keeps being read and a paused tenant's records wait
    here (each tracked, so nothing past them is committed) until it is resumed.
    """

    def __init__(self) -> None:
        self._held: dict[str, deque[tuple[Hashable, object]]] = {}

    def add(self, tenant: str, partition: Hashable, item: object) -> None:
        self._held.setdefault(tenant, deque()).append((partition, item))

    def count(self, tenant: str) -> int:
        return len(self._held.get(tenant, ()))

    def take(self, tenant: str) -> list[object]:
        """All of `tenant`'s held items, oldest first, no longer held (for the spill)."""
        return [item for _, item in self._held.pop(tenant, ())]

    def release(self, paused: Iterable[str], limit: int) -> list[object]:
        """Up to `limit` held items of tenants no longer paused, oldest first per tenant."""
        blocked = set(paused)
        out: list[object] = []
        for tenant in [t for t in self._held if t not in blocked]:
            queue = self._held[tenant]
            while queue and len(out) < limit:
                out.append(queue.popleft()[1])
            if not queue:
                del self._held[tenant]
        return out

    def forget(self, partitions: Iterable[Hashable]) -> None:
        gone = set(partitions)
        for tenant in list(self._held):
            self._held[tenant] = deque(e for e in self._held[tenant] if e[0] not in gone)
            if not self._held[tenant]:
                del self._held[tenant]

    def __len__(self) -> int:
        return sum(len(q) for q in self._held.values())


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
