"""The Pub/Sub source's exactly-once option (`pubsub.exactly_once`) on Google's emulator.

What the emulator shows: the subscription is created with exactly-once delivery asked for,
acks go through `ack_with_response` and are final, and an ack the server refuses is
counted, never raised and never taken as done: the message really was not acked, so the
emulator delivers it again. What it cannot show: the emulator never refuses an ack itself
(it has no exactly-once semantics: no ack-id expiry, no redelivery guarantees), so the
refusal here is an `AcknowledgeError` handed to one real message's ack; docs/scaling.md
says what only a real project can show.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from consumers.tenancy import pubsub_subscription
from consumers.transport import Message
from consumers.transports.pubsub import PubSubSource, provision_pubsub
from services.local.emulators import PubSubEmulator
from services.settings import Settings

if shutil.which("gcloud") is None:
    pytest.skip("the gcloud SDK (Pub/Sub emulator) is not installed", allow_module_level=True)

pubsub_v1 = pytest.importorskip("google.cloud.pubsub_v1")
from google.cloud.pubsub_v1.subscriber.exceptions import AcknowledgeError, AcknowledgeStatus  # noqa: E402


@pytest.fixture(scope="module")
def emulator() -> Iterator[PubSubEmulator]:
    with PubSubEmulator() as running:
        yield running


def _poll(source: PubSubSource, count: int, timeout: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += source.poll(50, 0.2)
    return got


def _setup(emulator: PubSubEmulator) -> tuple[Settings, PubSubSource, dict[bytes, Message]]:
    tenant = f"e{uuid.uuid4().hex[:8]}"
    settings = Settings(
        transport="pubsub",
        tenants=[tenant],
        pubsub={"emulator_host": emulator.host_port, "ack_deadline_seconds": 10, "exactly_once": True},
        retry={"initial_backoff_seconds": 1.0, "max_backoff_seconds": 2.0},
    )
    provision_pubsub(settings, [tenant])
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(settings.pubsub.project_id, pubsub_subscription(tenant, "arrivals"))
    assert subscriber.get_subscription(request={"subscription": path}).enable_exactly_once_delivery
    subscriber.close()
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(settings.pubsub.project_id, f"arrivals-{tenant}")
    for payload in (b"a", b"b", b"c"):
        publisher.publish(topic, payload).result(timeout=10)
    publisher.stop()
    source = PubSubSource(settings, [tenant])
    got = {m.value: m for m in _poll(source, 3, 20)}
    assert sorted(got) == [b"a", b"b", b"c"]
    # the server refuses c's ack (as it does for an expired ack id under exactly-once)
    refused: Future[AcknowledgeStatus] = Future()
    refused.set_exception(AcknowledgeError(AcknowledgeStatus.INVALID_ACK_ID, "ack id expired"))
    source._held[str(got[b"c"].token)].message.ack_with_response = lambda: refused
    return settings, source, got


def test_a_refused_exactly_once_ack_is_counted_never_raised_and_never_taken_as_done(
    emulator: PubSubEmulator,
) -> None:
    _settings, source, got = _setup(emulator)
    try:
        source.ack([m.token for m in got.values()])  # no exception: a refusal is not an error
        assert source.refused_acks == 1
        assert source.in_flight() == 0  # released: the client no longer extends its lease
    finally:
        source.close(10)


@pytest.mark.slow
def test_a_refused_exactly_once_ack_means_the_message_comes_again_and_the_acked_ones_do_not(
    emulator: PubSubEmulator,
) -> None:
    # slow: under exactly-once the client leases for at least 60 s, so c returns after ~60 s
    _settings, source, got = _setup(emulator)
    try:
        source.ack([m.token for m in got.values()])
        started = time.monotonic()
        again = _poll(source, 1, 90)
        print(f"\nthe refused message came again after {time.monotonic() - started:.1f}s")
        again += _poll(source, 1, 5)
        assert [m.value for m in again] == [b"c"], "a and b were acked for real; only c comes again"
        source.ack([again[0].token])
        assert source.refused_acks == 1
    finally:
        source.close(10)
