"""Spilling a paused tenant's shared-topic records to its overflow topic.

A shared arrivals partition is one log for many tenants. When one of them is paused, its
records are held in memory (consumers.tenancy.TenantHold) so the others keep flowing; once a
tenant's hold reaches `after` records, its held records and every later one read while it
stays paused are copied to `audioguard.overflow.<tenant>`, created on first use. That topic
is consumed like a dedicated one, so pausing the tenant pauses its overflow partitions and
the shared partitions never need pausing for one tenant.

The rules this module keeps for both sources (Kafka, memory):

- a spilled record's shared offset stays unfinished in the source's offset tracker until the
  broker acknowledged the copy (`acknowledged`), so no commit passes it; a failed copy is
  spilled again (`retry`). A crash between the acknowledgement and the commit re-reads the
  record and spills it twice: the copies carry the same idempotency key, so the second is
  answered from the verdict store, never re-scored;
- the copy keeps payload, key and headers (the signed `ag-tenant` headers), and is verified
  again when read back (consumers.tenancy.tenant_of_record);
- a tenant spills while it is paused; resumed, its new shared records are handed out again
  and its overflow topic is read beside them. Order within a tenant is kept within each of
  the two logs, not across them.

It never produces itself: the source hands it a `produce` callable, so this module does no I/O.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import cast

from consumers.tenancy import SHARED, TenantHold, overflow_topic
from consumers.transport import Message
from services import metrics

__all__ = ["Spill", "SpillProducer", "hold_or_spill"]

log = logging.getLogger("audioguard.overflow")

#: (overflow topic, message, on_done(error or None)); may raise to refuse the record now
SpillProducer = Callable[[str, Message, Callable[[BaseException | None], None]], None]


class Spill:
    """Which paused shared tenants spill, and which spilled shared offsets may be finished.

    Not thread-safe: `produce`'s `on_done` must run on the thread that polls the source (as
    librdkafka's delivery reports do inside `Producer.poll`)."""

    def __init__(self, produce: SpillProducer, after: int, max_in_flight: int = 10_000) -> None:
        self._produce = produce
        self.after = max(1, after)
        self._max_in_flight = max(1, max_in_flight)
        self._spilling: set[str] = set()
        self._in_flight = 0
        self._done: list[tuple[Hashable, int]] = []
        self._failed: list[Message] = []
        #: records spilled and acknowledged, per tenant (also the Prometheus counter)
        self.spilled: Counter[str] = Counter()

    def wants(self, tenant: str, held: int) -> bool:
        """Should this paused tenant's next record (with `held` of its records held) spill?"""
        if tenant in self._spilling:
            return True
        if held < self.after:
            return False
        self._spilling.add(tenant)
        log.warning(
            "shared tenant spills to its overflow topic",
            extra={"tenant": tenant, "topic": overflow_topic(tenant), "held": held},
        )
        return True

    def stop(self, tenants: Iterable[str]) -> None:
        """Resumed tenants: their shared records are handed out again."""
        for tenant in set(tenants) & self._spilling:
            self._spilling.discard(tenant)
            log.info(
                "shared tenant stops spilling", extra={"tenant": tenant, "spilled": self.spilled[tenant]}
            )

    def spill(self, messages: Sequence[Message]) -> None:
        """Copy `messages` (shared-topic records, tracked unfinished) to their tenants'
        overflow topics. A copy the producer refuses at once is kept and tried again."""
        for message in messages:

            def done(error: BaseException | None, message: Message = message) -> None:
                self._in_flight -= 1
                if error is not None:
                    log.warning(
                        "spill not acknowledged; spilling it again",
                        extra={"tenant": message.tenant, "error": str(error)},
                    )
                    self._failed.append(message)
                    return
                topic, partition, offset = cast(tuple[str, int, int], message.token)
                self._done.append(((topic, partition), offset))
                self.spilled[message.tenant] += 1
                metrics.SHARED_SPILLED.labels(tenant=message.tenant).inc()

            self._in_flight += 1
            try:
                self._produce(overflow_topic(message.tenant), message, done)
            except Exception as error:  # noqa: BLE001 - a refused copy is only tried again
                done(error)

    def acknowledged(self) -> list[tuple[Hashable, int]]:
        """(shared partition, offset) of copies acknowledged since the last call: the
        source finishes them in its tracker, so its commit may pass them now."""
        done, self._done = self._done, []
        return done

    def retry(self) -> None:
        """Spill again what the broker did not acknowledge."""
        failed, self._failed = self._failed, []
        self.spill(failed)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Revoked shared partitions: the next owner reads their uncommitted records again."""
        gone = set(partitions)
        self._failed = [m for m in self._failed if cast(tuple[str, int, int], m.token)[:2] not in gone]
        self._done = [d for d in self._done if d[0] not in gone]

    def in_flight(self) -> int:
        """Copies sent and not acknowledged yet (memory they still take in the producer)."""
        return self._in_flight + len(self._failed)

    def full(self) -> bool:
        """As many copies unacknowledged as the bound allows (the broker is slow or away):
        the source stops reading the shared partitions until half of them are acknowledged.
        Counted apart from the hold: a flood sends copies far faster than the acknowledgements
        of a batching producer come back, and counting them as held paused the shared
        partition for everyone every few hundred records."""
        return self.in_flight() >= self._max_in_flight

    def drained(self) -> bool:
        return self.in_flight() <= self._max_in_flight // 2

    def spilling(self) -> frozenset[str]:
        return frozenset(self._spilling)


def hold_or_spill(spill: Spill, hold: TenantHold, message: Message) -> None:
    """A paused tenant's shared record (tracked unfinished): held, or once the tenant's hold
    is full, spilled together with what it held. Unproven records (SHARED) have no overflow
    topic: they only ever wait in the hold."""
    tenant = message.tenant
    if tenant != SHARED and spill.wants(tenant, hold.count(tenant) + 1):
        spill.spill([*cast(list[Message], hold.take(tenant)), message])
    else:
        hold.add(tenant, cast(tuple[str, int, int], message.token)[:2], message)
