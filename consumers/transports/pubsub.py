"""Google Pub/Sub behind the Source/Sink interface (the only module importing google.cloud.pubsub).

Names (see consumers.tenancy): topic `arrivals-<tenant>` with subscription
`arrivals-<tenant>-workers`, verdict topic `verdicts-<tenant>`, dead-letter topic
`dlq-<tenant>` with subscription `dlq-<tenant>-replay` for the DLQ tool. `provision_pubsub`
creates them; the worker subscription carries a dead-letter policy (to `dlq-<tenant>`
after `pubsub.max_delivery_attempts`) and a retry policy (server-side backoff).

How the source works:
- one streaming pull per tenant subscription, with flow control (messages and bytes from
  `settings.pubsub`); its callbacks only append to a bounded per-tenant queue that
  `poll()` drains round-robin across tenants;
- a message is *held* from the callback until `ack`, `nack` or `drop`: while it waits in
  the queue, in a batch or in the scorer, its ack deadline keeps being extended (the
  client's lease manager, and our own extender with unary ModifyAckDeadline calls, which
  also covers messages whose stream failed and was replaced);
- `ack` is a unary Acknowledge RPC, so the caller learns when it failed, and it still
  works for a message whose stream failed and was replaced; with `pubsub.exactly_once`
  (the subscription has exactly-once delivery) it is `ack_with_response`, and an ack the
  server refuses is counted and the message released: it will come again, never "done";
- `nack` answers a retryable failure: the ack deadline is set to a backoff that grows with
  the delivery attempt, so the message comes back later, not at once;
- `pause(tenant)` stops handing out that tenant's messages; its stream stops pulling once
  the flow-control window is full. Held messages stay leased and are delivered after
  `resume`, never nacked, because a nack counts as a delivery attempt towards the
  dead-letter policy.

Emulator caveat (gcloud emulator 0.8.20, not Pub/Sub itself): it never notices that a
streaming pull ended (a NoSuchMethodError inside its gRPC server loses the cancellation),
so the dead stream keeps taking messages whose lease lapsed; each comes back only after
another ack deadline, with its delivery attempt counted up, and some lose that race for
minutes (docs/guarantees.md, "Time to redelivery after a crash"). Tests end the dead
streams after a kill (tests/contract/conftest.py, `forget_dead_connections`).

The sink publishes with message ordering (ordering key = content id, from
`OutRecord.ordering_key`) and maps record headers to attributes, so the idempotency key
travels as an attribute. A failed publish future fails the returned future, and the
ordering key is resumed so that a later retry can go through. With ordering on, the client
retries an unconfirmed publish for ever, so the sink fails a future that was not confirmed
within `retry.max_total_seconds` itself (RetryableError "publish_timeout").

This module must never ack on its own initiative (only `Source.ack` acks) and never let
a google exception escape: every SDK error is mapped once, by `_map_error`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher import exceptions as pub_exc
from google.cloud.pubsub_v1.subscriber.exceptions import AcknowledgeError, AcknowledgeStatus
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from google.protobuf import duration_pb2

from consumers.tenancy import pubsub_subscription, pubsub_topic, validate_tenant
from consumers.transport import AckToken, Message, MessageRejected, OutRecord, Sink, Source
from services.errors import AudioguardError, FatalError, RetryableError
from services.retry import jittered
from services.settings import Settings

__all__ = [
    "PubSubSink",
    "PubSubSource",
    "open_pubsub",
    "provision_pubsub",
    "read_subscription",
    "verdict_subscription",
]

log = logging.getLogger(__name__)
#: one DEBUG line per lease event (leased, extended, acked, nacked, stream started / ended),
#: with message ids and delivery attempts, to trace where a message waited after a crash
lease_log = logging.getLogger(f"{__name__}.leases")

#: Pub/Sub limits that bite: attribute values, and ids per Acknowledge / ModifyAckDeadline
_MAX_ATTRIBUTE_VALUE_BYTES = 1024
_ACK_CHUNK = 500
#: Pub/Sub accepts ack deadlines and retry backoffs of 0..600 s, dead-letter attempts 5..100
_MAX_DEADLINE_SECONDS = 600
#: how long stopping one streaming pull may take (pause, close)
_SHUTDOWN_SECONDS = 5.0


def verdict_subscription(tenant: str) -> str:
    """`verdicts-<tenant>-readers`: provisioned with the topics so that no verdict published
    before a moderation system subscribes is lost (a topic without subscriptions drops)."""
    return f"{pubsub_topic('verdicts', tenant)}-readers"


# --------------------------------------------------------------------------------------
# the one place SDK errors become audioguard errors


def _map_error(exc: BaseException, operation: str) -> AudioguardError:
    """Translate a google / Pub/Sub client exception into the error taxonomy."""
    if isinstance(exc, AudioguardError):
        return exc
    text = f"{operation}: {type(exc).__name__}: {exc}"
    if isinstance(exc, gexc.NotFound):
        return FatalError("missing_topic", text)
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated | gexc.Unauthorized | gexc.Forbidden):
        return FatalError("auth", text)
    if isinstance(exc, gexc.InvalidArgument | gexc.FailedPrecondition | pub_exc.MessageTooLargeError):
        return FatalError("bad_request", text)
    if isinstance(exc, gexc.TooManyRequests | gexc.ResourceExhausted):
        return RetryableError("throttled", text)
    if isinstance(exc, pub_exc.PublishToPausedOrderingKeyException):
        return RetryableError("ordering_key_paused", text)
    if isinstance(
        exc,
        gexc.ServiceUnavailable
        | gexc.DeadlineExceeded
        | gexc.InternalServerError
        | gexc.Aborted
        | gexc.Cancelled
        | gexc.Unknown
        | gexc.RetryError
        | pub_exc.PublishError
        | TimeoutError
        | ConnectionError,
    ):
        return RetryableError("unavailable", text)
    if isinstance(exc, gexc.GoogleAPICallError):
        return RetryableError("unavailable", text)
    return FatalError("pubsub_client", text)


@contextlib.contextmanager
def _sdk_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except AudioguardError:
        raise
    except (
        gexc.GoogleAPIError,
        pub_exc.MessageTooLargeError,
        pub_exc.PublishToPausedOrderingKeyException,
        TimeoutError,
        ConnectionError,
    ) as exc:
        raise _map_error(exc, operation) from exc


def _use_emulator(settings: Settings) -> None:
    # The client library finds the emulator only through this variable (and then uses an
    # insecure channel and anonymous credentials); set it before any client is built.
    if settings.pubsub.emulator_host:
        os.environ["PUBSUB_EMULATOR_HOST"] = settings.pubsub.emulator_host


def _bounded_retry(settings: Settings) -> Retry:
    """The client's transient-error retry, bounded by our retry budget: its defaults retry a
    call for up to a minute, longer than the pipeline should wait to hear of an outage."""
    return Retry(
        predicate=if_exception_type(
            gexc.Aborted,
            gexc.Cancelled,
            gexc.DeadlineExceeded,
            gexc.InternalServerError,
            gexc.ResourceExhausted,
            gexc.ServiceUnavailable,
            gexc.Unknown,
        ),
        initial=settings.retry.initial_backoff_seconds,
        maximum=settings.retry.max_backoff_seconds,
        timeout=settings.retry.max_total_seconds,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    seconds = min(max(seconds, 0.0), float(_MAX_DEADLINE_SECONDS))
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


# --------------------------------------------------------------------------------------
# provisioning


def provision_pubsub(settings: Settings, tenants: list[str]) -> None:
    """Create, idempotently, every topic and subscription `tenants` need.

    Per tenant: topics arrivals-/verdicts-/dlq-<tenant>; subscription
    arrivals-<tenant>-workers (dead-letter policy to dlq-<tenant>, retry policy with the
    backoff of `settings.retry`); dlq-<tenant>-replay for the DLQ tool; and
    verdicts-<tenant>-readers so that verdicts are kept until a reader subscribes.
    On real Pub/Sub the service agent also needs publisher on the DLQ topic and subscriber
    on the worker subscription (terraform/ grants it; the emulator has no IAM).
    """
    _use_emulator(settings)
    project = settings.pubsub.project_id
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    attempts = min(max(settings.pubsub.max_delivery_attempts, 5), 100)
    retry_policy = pubsub_v1.types.RetryPolicy(
        minimum_backoff=_duration(settings.retry.initial_backoff_seconds),
        maximum_backoff=_duration(
            max(settings.retry.max_backoff_seconds, settings.retry.initial_backoff_seconds)
        ),
    )
    try:
        for tenant in tenants:
            validate_tenant(tenant)
            topics = {
                kind: publisher.topic_path(project, pubsub_topic(kind, tenant))
                for kind in ("arrivals", "verdicts", "dlq")
            }
            for path in topics.values():
                with _sdk_errors("create_topic"), contextlib.suppress(gexc.AlreadyExists):
                    publisher.create_topic(request={"name": path})
            subscriptions: list[dict[str, Any]] = [
                {
                    "name": subscriber.subscription_path(project, pubsub_subscription(tenant, "arrivals")),
                    "topic": topics["arrivals"],
                    "ack_deadline_seconds": min(max(settings.pubsub.ack_deadline_seconds, 10), 600),
                    "dead_letter_policy": pubsub_v1.types.DeadLetterPolicy(
                        dead_letter_topic=topics["dlq"], max_delivery_attempts=attempts
                    ),
                    "retry_policy": retry_policy,
                    "enable_exactly_once_delivery": settings.pubsub.exactly_once,
                },
                {
                    "name": subscriber.subscription_path(project, pubsub_subscription(tenant, "dlq")),
                    "topic": topics["dlq"],
                    "ack_deadline_seconds": 60,
                },
                {
                    "name": subscriber.subscription_path(project, verdict_subscription(tenant)),
                    "topic": topics["verdicts"],
                    "ack_deadline_seconds": 60,
                    "enable_message_ordering": True,
                },
            ]
            for request in subscriptions:
                with _sdk_errors("create_subscription"), contextlib.suppress(gexc.AlreadyExists):
                    subscriber.create_subscription(request=request)
    finally:
        subscriber.close()
        publisher.stop()


# --------------------------------------------------------------------------------------
# source


@dataclass
class _Held:
    """A message between its callback and its ack / nack."""

    tenant: str
    subscription: str
    message: Any  # pubsub_v1.subscriber.message.Message
    #: the streaming pull that leased it; None once that stream was stopped
    stream: Any
    delivered: bool = False


class PubSubSource(Source):
    """Streaming pull over one `arrivals-<tenant>-workers` subscription per tenant.

    Thread model: the client's callback threads append to per-tenant queues under one
    condition; `poll`, `ack`, `nack`, `pause`, `resume` are called from the runner thread;
    a small extender thread keeps the deadlines of every held message alive.
    """

    def __init__(self, settings: Settings, tenants: Sequence[str], *, callback_threads: int = 2) -> None:
        if not tenants:
            raise FatalError("bad_config", "the Pub/Sub source needs at least one tenant (settings.tenants)")
        _use_emulator(settings)
        self._settings = settings
        self._project = settings.pubsub.project_id
        self._tenants = [validate_tenant(t) for t in tenants]
        self._subscriber = pubsub_v1.SubscriberClient()
        #: unary calls (ack, deadlines) give up within the retry budget, not the client's minute
        self._rpc: dict[str, Any] = {
            "retry": _bounded_retry(settings),
            "timeout": settings.retry.max_total_seconds,
        }
        self._subscriptions = {
            t: self._subscriber.subscription_path(self._project, pubsub_subscription(t, "arrivals"))
            for t in self._tenants
        }
        self._deadline = min(max(settings.pubsub.ack_deadline_seconds, 10), _MAX_DEADLINE_SECONDS)
        self._flow_control = pubsub_v1.types.FlowControl(
            max_messages=settings.pubsub.max_messages,
            max_bytes=settings.pubsub.max_bytes,
            # a message can wait in a batch and in the scorer: lease it for as long as a
            # worker could plausibly hold it, then let Pub/Sub redeliver it elsewhere
            max_lease_duration=3600,
            # each extension asks for at most our ack deadline, so a dead worker's messages
            # come back within `ack_deadline_seconds`, not the client's default minute
            max_duration_per_lease_extension=self._deadline,
        )
        if settings.pubsub.exactly_once:
            # exactly-once delivery extends leases by at least 60 s (the client's minimum
            # for it), so a dead worker's messages come back after max(deadline, 60 s)
            extension = max(self._deadline, 60)
            self._flow_control = self._flow_control._replace(
                min_duration_per_lease_extension=extension, max_duration_per_lease_extension=extension
            )
        #: acks the server refused under exactly-once delivery: those messages come again
        self.refused_acks = 0
        self._callback_threads = callback_threads
        self._cond = threading.Condition()
        self._queues: dict[str, deque[str]] = {t: deque() for t in self._tenants}
        self._held: dict[str, _Held] = {}
        self._streams: dict[str, Any] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._paused: set[str] = set()
        self._failure: AudioguardError | None = None
        self._closed = False
        self._rr = 0
        self._stop = threading.Event()
        for tenant in self._tenants:
            self._start_stream(tenant)
        self._extender = threading.Thread(target=self._extend_loop, name="pubsub-lease-extender", daemon=True)
        self._extender.start()

    # -- streams ------------------------------------------------------------------------

    def _start_stream(self, tenant: str) -> None:
        executor = ThreadPoolExecutor(
            max_workers=self._callback_threads, thread_name_prefix=f"pubsub-{tenant}"
        )
        stream_box: list[Any] = []

        def callback(message: Any) -> None:
            self._on_message(tenant, stream_box[0] if stream_box else None, message)

        with _sdk_errors("subscribe"):
            stream = self._subscriber.subscribe(
                self._subscriptions[tenant],
                callback=callback,
                flow_control=self._flow_control,
                scheduler=ThreadScheduler(executor=executor),
            )
        stream_box.append(stream)
        lease_log.debug("stream started tenant=%s stream=%x", tenant, id(stream))
        stream.add_done_callback(lambda fut, t=tenant: self._on_stream_done(t, fut))
        self._streams[tenant] = stream
        self._executors[tenant] = executor

    def _on_stream_done(self, tenant: str, future: Any) -> None:
        lease_log.debug("stream ended tenant=%s stream=%x", tenant, id(future))
        if future.cancelled() or self._closed:
            return
        exc = future.exception()
        if exc is None:
            return
        error = _map_error(exc, f"streaming pull {self._subscriptions[tenant]}")
        log.error("Pub/Sub streaming pull for tenant %s ended: %s", tenant, error)
        with self._cond:
            if self._streams.get(tenant) is future:
                self._streams.pop(tenant, None)
            for held in self._held.values():
                if held.stream is future:
                    held.stream = None  # its lease manager is gone: our extender takes over
            if isinstance(error, FatalError):
                self._failure = error
            self._cond.notify_all()
        if not isinstance(error, FatalError) and not self._closed:
            # a transient stream failure the client gave up on: open a new stream
            time.sleep(min(self._settings.retry.max_backoff_seconds, 1.0))
            with self._cond:
                restart = tenant not in self._streams and not self._closed
            if restart:
                self._start_stream(tenant)

    def _on_message(self, tenant: str, stream: Any, message: Any) -> None:
        with self._cond:
            # Never block here: the client dispatches at most its flow-control window of
            # unreleased messages, which bounds this queue; a blocked callback would only
            # keep a message out of our lease extension. A paused tenant's arrivals are
            # kept, never nacked (see above).
            if self._closed:
                message.nack()  # closing: hand it straight back
                return
            self._held[message.ack_id] = _Held(tenant, self._subscriptions[tenant], message, stream)
            lease_log.debug(
                "leased tenant=%s message_id=%s attempt=%s stream=%x",
                tenant,
                message.message_id,
                message.delivery_attempt,
                id(stream),
            )
            self._queues[tenant].append(message.ack_id)
            self._cond.notify_all()

    # -- Source -------------------------------------------------------------------------

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while True:
                if self._failure is not None:
                    raise self._failure
                active = [t for t in self._tenants if t not in self._paused and self._queues[t]]
                if active or self._closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            out: list[Message] = []
            # round-robin across tenants so one busy tenant cannot starve the others
            while active and len(out) < max_messages:
                self._rr = (self._rr + 1) % len(active)
                tenant = active[self._rr]
                ack_id = self._queues[tenant].popleft()
                held = self._held.get(ack_id)
                if held is not None:
                    held.delivered = True
                    out.append(self._to_message(held))
                active = [t for t in active if self._queues[t]]
            self._cond.notify_all()
            return out

    def _to_message(self, held: _Held) -> Message:
        msg = held.message
        topic = pubsub_topic("arrivals", held.tenant)
        publish_time = msg.publish_time
        timestamp = publish_time.timestamp() if publish_time is not None else None
        attempt = msg.delivery_attempt or 1
        return Message(
            token=msg.ack_id,
            tenant=held.tenant,
            topic=topic,
            value=bytes(msg.data),
            key=msg.ordering_key.encode() if msg.ordering_key else None,
            headers=tuple((k, v.encode()) for k, v in sorted(msg.attributes.items())),
            timestamp=timestamp,
            coordinates={
                "transport": "pubsub",
                "topic": topic,
                "subscription": held.subscription,
                "ack_id": msg.ack_id,
                "message_id": msg.message_id,
                "timestamp": timestamp,
            },
            delivery_attempt=int(attempt),
        )

    def _take(self, tokens: Sequence[AckToken]) -> dict[str, list[_Held]]:
        """Remove these tokens from the held set, grouped by subscription."""
        groups: dict[str, list[_Held]] = {}
        with self._cond:
            for token in tokens:
                held = self._held.pop(str(token), None)
                if held is None:
                    continue
                with contextlib.suppress(ValueError):
                    self._queues[held.tenant].remove(str(token))
                groups.setdefault(held.subscription, []).append(held)
            self._cond.notify_all()
        return groups

    def _release(self, items: Iterable[_Held]) -> None:
        # drop() frees the client's lease and flow-control slot without another RPC
        for held in items:
            if held.stream is not None:
                held.message.drop()

    def ack(self, tokens: Sequence[AckToken]) -> None:
        """Acknowledge synchronously (unary Acknowledge); raises RetryableError / FatalError.
        Unknown tokens (already acked or dropped) are ignored: ack is idempotent."""
        groups = self._take(tokens)
        if self._settings.pubsub.exactly_once:
            try:
                self._ack_exactly_once([h for items in groups.values() for h in items])
            finally:
                self._release(h for items in groups.values() for h in items)
            return
        try:
            for subscription, items in groups.items():
                ids = [h.message.ack_id for h in items]
                lease_log.debug("acking %s", " ".join(h.message.message_id for h in items))
                for i in range(0, len(ids), _ACK_CHUNK):
                    with _sdk_errors("acknowledge"):
                        self._subscriber.acknowledge(
                            request={"subscription": subscription, "ack_ids": ids[i : i + _ACK_CHUNK]},
                            **self._rpc,
                        )
        finally:
            self._release(h for items in groups.values() for h in items)

    def _ack_exactly_once(self, items: list[_Held]) -> None:
        """Ack each message with `ack_with_response` and wait for the server's answer.

        Under exactly-once delivery an ack can be refused (the ack id expired because the
        lease lapsed, or the message went to another subscriber): that message was *not*
        acked and will be delivered again, where the verdict store answers it. So a refusal
        is logged and counted, never treated as done and never raised; only a permission
        error is fatal. A message whose stream was replaced is acked with the unary RPC,
        whose refusal (InvalidArgument / FailedPrecondition) means the same."""
        futures: list[tuple[_Held, Any]] = []
        for held in items:
            if held.stream is None:
                try:
                    with _sdk_errors("acknowledge"):
                        self._subscriber.acknowledge(
                            request={"subscription": held.subscription, "ack_ids": [held.message.ack_id]},
                            **self._rpc,
                        )
                except FatalError as exc:
                    if exc.reason == "auth":
                        raise
                    self._refused(held, str(exc))
                continue
            futures.append((held, held.message.ack_with_response()))
        budget = time.monotonic() + self._settings.retry.max_total_seconds
        for held, future in futures:
            try:
                future.result(timeout=max(budget - time.monotonic(), 0.1))
            except AcknowledgeError as exc:
                if exc.error_code == AcknowledgeStatus.PERMISSION_DENIED:
                    raise FatalError("auth", f"acknowledge: {exc}") from exc
                self._refused(held, f"{exc.error_code.name}: {exc.info}")
            except Exception as exc:  # noqa: BLE001 - a timeout or a stream failure: not acked
                self._refused(held, f"{type(exc).__name__}: {exc}")

    def _refused(self, held: _Held, why: str) -> None:
        self.refused_acks += 1
        log.warning(
            "Pub/Sub refused the ack of message %s (%s): it will be delivered again",
            held.message.message_id,
            why,
        )

    def nack(self, tokens: Sequence[AckToken], delay_seconds: float | None = None) -> None:
        """Give these messages back for redelivery after a backoff.

        `delay_seconds=None` backs off exponentially with the delivery attempt (bounded by
        `settings.retry`, with jitter); 0 redelivers at once. Every nack counts as a
        delivery attempt for the dead-letter policy."""
        groups = self._take(tokens)
        retry = self._settings.retry
        for subscription, items in groups.items():
            by_delay: dict[int, list[str]] = {}
            for held in items:
                if delay_seconds is None:
                    attempt = held.message.delivery_attempt or 1
                    backoff = min(
                        retry.initial_backoff_seconds * 2 ** (attempt - 1), retry.max_backoff_seconds
                    )
                    delay = jittered(backoff)
                else:
                    delay = delay_seconds
                seconds = min(max(round(delay), 0), _MAX_DEADLINE_SECONDS)
                lease_log.debug("nacked message_id=%s redeliver_after=%ss", held.message.message_id, seconds)
                if held.stream is not None:
                    # Through the stream's own dispatcher, which orders the deadline change
                    # before releasing the lease; a unary call could race its lease manager
                    # and be overridden by an extension.
                    if seconds == 0:
                        held.message.nack()
                    else:
                        held.message.modify_ack_deadline(seconds)
                        held.message.drop()
                else:
                    by_delay.setdefault(seconds, []).append(held.message.ack_id)
            for seconds, ids in by_delay.items():
                for i in range(0, len(ids), _ACK_CHUNK):
                    with _sdk_errors("modify_ack_deadline"):
                        self._subscriber.modify_ack_deadline(
                            request={
                                "subscription": subscription,
                                "ack_ids": ids[i : i + _ACK_CHUNK],
                                "ack_deadline_seconds": seconds,
                            },
                            **self._rpc,
                        )

    def drop(self, tokens: Sequence[AckToken]) -> None:
        """Forget these messages; Pub/Sub redelivers them at once (a nack without delay)."""
        try:
            self.nack(tokens, delay_seconds=0)
        except AudioguardError as exc:
            # the lease lapses by itself after the ack deadline: redelivery only comes later
            log.warning("could not nack dropped Pub/Sub messages: %s", exc)

    def pause(self, tenants: Iterable[str]) -> None:
        """Stop handing out these tenants' messages at once. Their streams stay open and stop
        pulling when the flow-control window (`pubsub.max_messages` / `max_bytes` leased
        messages) is full, so a paused tenant holds a bounded number of messages, all still
        leased. Closing the stream instead would cost a reconnect per pause and, on the
        emulator, strand whatever it pushes to the closed stream until its ack deadline."""
        with self._cond:
            self._paused.update(t for t in tenants if t in self._subscriptions)
            self._cond.notify_all()

    def resume(self, tenants: Iterable[str]) -> None:
        with self._cond:
            self._paused.difference_update(tenants)
            self._cond.notify_all()

    def paused(self) -> frozenset[str]:
        return frozenset(self._paused)

    def in_flight(self) -> int:
        """Messages received and not yet acked, nacked or dropped (queued or handed out)."""
        with self._cond:
            return len(self._held)

    def close(self, timeout: float) -> None:
        """Stop every stream, hand back (nack) what was received but never finished."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.cancel()
        # only once every stream's lease manager stopped can a nack not be overridden
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.result(timeout=max(0.0, min(_SHUTDOWN_SECONDS, deadline - time.monotonic())))
        with self._cond:
            for held in self._held.values():
                held.stream = None
            leftovers = list(self._held)
        if leftovers:
            try:
                self.nack(leftovers, delay_seconds=0)
            except AudioguardError as exc:
                log.warning("could not hand back %d Pub/Sub messages on close: %s", len(leftovers), exc)
        self._extender.join(max(0.0, deadline - time.monotonic()))
        if all(stream.done() for stream in streams):
            self._subscriber.close()
        else:
            # a stream still shutting down (the server is unreachable) would fail in its own
            # threads on a closed channel; leave the channel to them, it goes with the process
            log.warning("Pub/Sub streams still stopping after %.1fs; leaving the channel open", timeout)

    # -- our own lease extension for every held message ------------------------------------
    # The client's lease manager alone was not enough: with the emulator, messages held in
    # a paused tenant's queue past the ack deadline were delivered a second time. A unary
    # ModifyAckDeadline per subscription every third of the deadline is cheap and certain.

    def _extend_loop(self) -> None:
        period = max(1.0, self._deadline / 3)
        while not self._stop.wait(period):
            with self._cond:
                orphans: dict[str, list[str]] = {}
                message_ids: dict[str, list[str]] = {}
                for ack_id, held in self._held.items():
                    orphans.setdefault(held.subscription, []).append(ack_id)
                    message_ids.setdefault(held.subscription, []).append(held.message.message_id)
            for subscription, ids in orphans.items():
                lease_log.debug(
                    "extending by %ss %s: %s",
                    self._deadline,
                    subscription,
                    " ".join(message_ids[subscription]),
                )
                for i in range(0, len(ids), _ACK_CHUNK):
                    try:
                        with _sdk_errors("modify_ack_deadline"):
                            self._subscriber.modify_ack_deadline(
                                request={
                                    "subscription": subscription,
                                    "ack_ids": ids[i : i + _ACK_CHUNK],
                                    "ack_deadline_seconds": self._deadline,
                                },
                                **self._rpc,
                            )
                    except AudioguardError as exc:
                        log.warning("lease extension failed for %d messages: %s", len(ids), exc)


# --------------------------------------------------------------------------------------
# sink


class PubSubSink(Sink):
    """Publishes verdicts and dead letters to `verdicts-<tenant>` / `dlq-<tenant>`.

    Ordering key = `OutRecord.ordering_key` (the content id), else the record key; headers
    become attributes (values must be UTF-8 and at most 1024 bytes: Pub/Sub's limit)."""

    def __init__(self, settings: Settings, *, max_outstanding: int = 1000) -> None:
        _use_emulator(settings)
        self._project = settings.pubsub.project_id
        self._publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.01, max_messages=100),
            publisher_options=pubsub_v1.types.PublisherOptions(
                enable_message_ordering=True,
                # bounded retries; note the client ignores them while ordering is on (then it
                # retries for ever), which is why the sink also has a watchdog (below)
                retry=_bounded_retry(settings),
                timeout=settings.retry.max_total_seconds,
                flow_control=pubsub_v1.types.PublishFlowControl(
                    message_limit=max_outstanding,
                    byte_limit=64 * 1024 * 1024,
                    limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.ERROR,
                ),
            ),
        )
        self._lock = threading.Lock()
        #: our futures not settled yet, with the moment they give up
        self._outstanding: dict[Future[None], float] = {}
        self._done = threading.Condition(self._lock)
        # With message ordering on, the client retries a publish for ever whatever retry it
        # is given; so the sink enforces the budget itself: a publish not confirmed in
        # `retry.max_total_seconds` fails with RetryableError("publish_timeout"). The client
        # may still deliver it later: a duplicate verdict, which is the same verdict.
        self._publish_timeout = settings.retry.max_total_seconds
        self._closed = threading.Event()
        self._watchdog = threading.Thread(
            target=self._expire_loop, name="pubsub-publish-watchdog", daemon=True
        )
        self._watchdog.start()

    def _expire_loop(self) -> None:
        while not self._closed.wait(0.2):
            now = time.monotonic()
            with self._lock:
                expired = [f for f, deadline in self._outstanding.items() if deadline <= now]
                for future in expired:
                    del self._outstanding[future]
                if expired:
                    self._done.notify_all()
            for future in expired:
                if not future.done():
                    future.set_exception(
                        RetryableError(
                            "publish_timeout", f"not confirmed by Pub/Sub within {self._publish_timeout:.1f}s"
                        )
                    )

    def _topic(self, record: OutRecord) -> str:
        if record.destination == "retry":
            # Pub/Sub retries by nack with backoff and the subscription's retry policy
            raise FatalError("unsupported_destination", "Pub/Sub has no retry topics; nack instead")
        return str(self._publisher.topic_path(self._project, pubsub_topic(record.destination, record.tenant)))

    @staticmethod
    def _attributes(record: OutRecord) -> dict[str, str]:
        attributes: dict[str, str] = {}
        for name, raw in record.headers:
            value = raw.decode("utf-8", errors="strict")
            if len(raw) > _MAX_ATTRIBUTE_VALUE_BYTES:
                raise FatalError(
                    "attribute_too_large",
                    f"header {name!r} has {len(raw)} bytes; "
                    f"Pub/Sub attribute values hold {_MAX_ATTRIBUTE_VALUE_BYTES}",
                )
            attributes[name] = value
        return attributes

    def publish(self, record: OutRecord) -> Future[None]:
        result: Future[None] = Future()
        try:
            topic = self._topic(record)
            attributes = self._attributes(record)
        except (AudioguardError, UnicodeDecodeError) as exc:
            result.set_exception(
                exc if isinstance(exc, AudioguardError) else FatalError("bad_header", str(exc))
            )
            return result
        ordering_key = (
            record.ordering_key if record.ordering_key is not None else record.key.decode("utf-8", "replace")
        )
        try:
            with _sdk_errors("publish"):
                sdk_future = self._publisher.publish(
                    topic, record.value, ordering_key=ordering_key, **attributes
                )
        except pub_exc.FlowControlLimitError as exc:
            raise MessageRejected(str(exc)) from exc
        except AudioguardError as exc:
            self._resume_key(topic, ordering_key)
            result.set_exception(exc)
            return result
        with self._lock:
            self._outstanding[result] = time.monotonic() + self._publish_timeout
        sdk_future.add_done_callback(lambda fut: self._settle(fut, result, topic, ordering_key))
        return result

    def _settle(self, sdk_future: Any, result: Future[None], topic: str, ordering_key: str) -> None:
        exc = sdk_future.exception()
        if exc is not None:
            # the client pauses an ordering key after a failure; resume it so a retry of
            # this record (or the next one for this content) can be published
            self._resume_key(topic, ordering_key)
        with self._lock:
            self._outstanding.pop(result, None)
            self._done.notify_all()
        with contextlib.suppress(InvalidStateError):  # the watchdog gave up on it already
            if exc is not None:
                result.set_exception(_map_error(exc, f"publish to {topic}"))
            else:
                result.set_result(None)

    def _resume_key(self, topic: str, ordering_key: str) -> None:
        if ordering_key:
            with contextlib.suppress(Exception):
                self._publisher.resume_publish(topic, ordering_key)

    def poll(self) -> None:
        """Delivery reports arrive on the client's own threads: nothing to serve here."""

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            while self._outstanding:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(remaining)
            return len(self._outstanding)

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        self._closed.set()
        with contextlib.suppress(Exception):
            self._publisher.stop()


def open_pubsub(settings: Settings) -> tuple[Source, Sink]:
    """The Source and Sink of `settings.tenants` on Pub/Sub (emulator when
    `pubsub.emulator_host` is set)."""
    return PubSubSource(settings, settings.tenants), PubSubSink(settings)


def read_subscription(
    settings: Settings,
    subscription: str,
    *,
    timeout: float = 10.0,
    idle: float = 2.0,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Yield (ordering key, data, attributes as headers) of the messages of `subscription`
    (an id such as `verdicts-acme-readers`), acking each batch once it was yielded.

    Stops after `idle` seconds without a message (or `timeout` overall) unless `follow`,
    in which case it runs until `stop()` returns True. For tools, the demo and tests."""
    _use_emulator(settings)
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(settings.pubsub.project_id, subscription)
    started = last = time.monotonic()
    try:
        while True:
            if stop is not None and stop():
                return
            now = time.monotonic()
            if not follow and (now - last > idle or now - started > timeout):
                return
            try:
                with _sdk_errors("pull"):
                    response = subscriber.pull(
                        request={"subscription": path, "max_messages": 100}, timeout=1.0
                    )
            except RetryableError:
                continue  # an empty long poll ends in DEADLINE_EXCEEDED on some servers
            received = list(response.received_messages)
            if not received:
                continue
            last = time.monotonic()
            for item in received:
                message = item.message
                headers = [(k, v.encode()) for k, v in sorted(message.attributes.items())]
                yield (message.ordering_key.encode() or None), bytes(message.data), headers
            with _sdk_errors("acknowledge"):
                subscriber.acknowledge(
                    request={"subscription": path, "ack_ids": [r.ack_id for r in received]}
                )
    finally:
        subscriber.close()


class SubscriptionPuller:
    """Unary pull of one subscription, for tools (the DLQ tool on `dlq-<tenant>-replay`):
    a pulled message stays leased until `ack` or `release`; nothing is acked on its own."""

    def __init__(self, settings: Settings, subscription: str) -> None:
        _use_emulator(settings)
        self._subscriber = pubsub_v1.SubscriberClient()
        self.path = self._subscriber.subscription_path(settings.pubsub.project_id, subscription)
        self._topic = subscription

    def pull(self, max_messages: int = 100, timeout: float = 2.0) -> list[Message]:
        """Up to `max_messages` messages (token: ack id); [] when none came within `timeout`."""
        try:
            with _sdk_errors("pull"):
                response = self._subscriber.pull(
                    request={"subscription": self.path, "max_messages": max_messages}, timeout=timeout
                )
        except RetryableError:
            return []  # an empty long poll ends in DEADLINE_EXCEEDED on some servers
        messages = []
        for item in response.received_messages:
            msg = item.message
            published = msg.publish_time.timestamp() if msg.publish_time is not None else None
            messages.append(
                Message(
                    token=item.ack_id,
                    tenant="",
                    topic=self._topic,
                    value=bytes(msg.data),
                    key=msg.ordering_key.encode() if msg.ordering_key else None,
                    headers=tuple((k, v.encode()) for k, v in sorted(msg.attributes.items())),
                    timestamp=published,
                    coordinates={"message_id": msg.message_id, "ack_id": item.ack_id, "timestamp": published},
                    delivery_attempt=int(item.delivery_attempt or 1),
                )
            )
        return messages

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        """Keep these messages leased for `seconds` more (0 gives them back at once)."""
        for i in range(0, len(ack_ids), _ACK_CHUNK):
            with _sdk_errors("modify_ack_deadline"):
                self._subscriber.modify_ack_deadline(
                    request={
                        "subscription": self.path,
                        "ack_ids": list(ack_ids[i : i + _ACK_CHUNK]),
                        "ack_deadline_seconds": seconds,
                    }
                )

    def ack(self, ack_ids: Sequence[str]) -> None:
        """Acknowledge (remove) these messages; raises RetryableError / FatalError."""
        for i in range(0, len(ack_ids), _ACK_CHUNK):
            with _sdk_errors("acknowledge"):
                self._subscriber.acknowledge(
                    request={"subscription": self.path, "ack_ids": list(ack_ids[i : i + _ACK_CHUNK])}
                )

    def release(self, ack_ids: Sequence[str]) -> None:
        self.extend(ack_ids, 0)

    def close(self) -> None:
        self._subscriber.close()
