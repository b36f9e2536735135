"""The HTTP API: FastAPI under /v1, in front of the same pipeline as every other arrival.

`POST /v1/detections` stores an upload in the tenant's storage (or takes an `audio_url` in
it), records the detection in PostgreSQL under (tenant, idempotency key) and publishes an
AudioArrival to the tenant's arrivals destination through the transport registry, exactly as
`audioguard publish` does; a worker scores it like any arrival. `GET /v1/detections/{id}` reads
the verdict back from the worker's verdict store (`services.store`) by the same key.

What it must never do: fetch a URL itself (an `audio_url` names the tenant's own storage,
checked by `services.storage`), answer another tenant's detection with anything but 404, or
queue without bound (a full publisher buffer or an unreachable broker answers 503).
"""

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.backpressure import LagGauge
from api.detections import Detection, Detections, Failure, IdempotencyConflict
from api.keys import ApiKey, ApiKeys
from api.problems import (
    PROBLEM_SCHEMA,
    Problem,
    on_http_error,
    on_problem,
    on_unexpected,
    on_validation_error,
)
from api.ratelimit import Limiter, open_limiter
from api.webhooks import CallbackRefused, WebhookDispatcher, check_callback_url
from consumers.transport import MessageRejected, OutRecord, Sink
from consumers.transports.registry import open_publisher
from services.audio import decode_with_limits
from services.errors import FatalError, PoisonMessage, RetryableError
from services.metrics import API_RATE_LIMITED, API_REQUEST_SECONDS, API_REQUESTS
from services.platform import arrival_for, arrival_for_uri
from services.settings import Settings
from services.storage import AudioStorage
from services.store import VerdictStore, open_store

__all__ = [
    "OPENAPI_PATH",
    "ApiContext",
    "DetectionOut",
    "create_app",
    "open_context",
    "openapi_document",
    "write_openapi",
]

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
#: content types an uploaded part may declare (the worker decodes with libsndfile)
AUDIO_TYPES = frozenset(
    {
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/flac",
        "audio/x-flac",
        "audio/ogg",
        "audio/opus",
        "audio/mpeg",
        "audio/mp3",
        "application/octet-stream",
    }
)
URL_SCHEMES = ("file", "s3")
_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d{1,6}(?:\.\d{1,3})?)(?:$|[,;\s])")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,5}$")
_POLL_SECONDS = 0.1
#: how often a waiting POST asks PostgreSQL whether the arrival was dead-lettered
_FAILURE_POLL_SECONDS = 1.0


@dataclass
class ApiContext:
    """What the handlers use; built once per process by `open_context`."""

    settings: Settings
    keys: ApiKeys
    detections: Detections
    store: VerdictStore
    storage: AudioStorage
    sink: Sink
    limiter: Limiter
    webhooks: WebhookDispatcher | None = None
    #: seconds of uploaded audio per client (api.rate_limit_audio_seconds_per_second), if set
    audio_limiter: Limiter | None = None
    #: the workers' lag per tenant (api.max_tenant_lag_messages), if set
    lag: LagGauge | None = None

    def close(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()
        self.sink.close(5.0)
        self.store.close()
        self.limiter.close()
        if self.audio_limiter is not None:
            self.audio_limiter.close()


def open_context(settings: Settings, *, webhooks: bool = True) -> ApiContext:
    """Everything the handlers use; with `webhooks`, the dispatcher thread is started too."""
    if not settings.database.url:
        raise FatalError(
            "bad_config",
            "the API needs database.url (AUDIOGUARD_DATABASE__URL): keys and detections live there",
        )
    api = settings.api
    detections = Detections(settings.database.url)
    store = open_store(settings.store.url, settings.store.ttl_seconds)
    context = ApiContext(
        settings=settings,
        keys=ApiKeys(settings.database.url, cache_seconds=api.key_cache_seconds),
        detections=detections,
        store=store,
        storage=AudioStorage(settings.storage),
        sink=open_publisher(settings),
        limiter=open_limiter(
            api.rate_limit_url,
            api.rate_limit_per_second,
            api.rate_limit_burst,
            key_prefix=api.rate_limit_key_prefix,
        ),
    )
    if api.rate_limit_audio_seconds_per_second is not None:
        context.audio_limiter = open_limiter(
            api.rate_limit_url,
            api.rate_limit_audio_seconds_per_second,
            api.rate_limit_audio_burst_seconds,
            key_prefix=f"{api.rate_limit_key_prefix}:audio",
        )
    if api.max_tenant_lag_messages is not None:
        context.lag = LagGauge(settings)
    if webhooks:
        context.webhooks = WebhookDispatcher(
            settings.database.url,
            detections,
            store,
            api,
            render_webhook,
            dead_letters=context.sink,
            transport=settings.transport,
        ).start()
    return context


def render_webhook(detection: Detection, verdict: bytes | None, failure: Failure | None = None) -> bytes:
    """The body of a webhook: the same document GET /v1/detections/{id} answers."""
    kind = "detection.completed" if verdict is not None else "detection.failed"
    body = {"type": kind, "detection": _out(detection, verdict, failure).model_dump(mode="json")}
    return json.dumps(body, separators=(",", ":")).encode()


class DetectionUrlRequest(BaseModel):
    """JSON body: audio already in the tenant's storage."""

    model_config = ConfigDict(extra="forbid")

    audio_url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://",
        description="file:// or s3:// inside the tenant's storage (other schemes: unsupported_url_scheme)",
    )
    content_id: str | None = Field(default=None, min_length=1, max_length=200)
    callback_url: str | None = Field(
        default=None, min_length=1, max_length=2048, description="https:// receiver of a signed webhook"
    )


class FailureOut(BaseModel):
    category: str = Field(description="the dead letter's category (schemas ErrorCategory)")
    reason: str = Field(description="the worker's reason code, e.g. undecodable_audio")
    error_class: str
    failed_at: datetime


class DetectionOut(BaseModel):
    id: str = Field(description="det_...; only this tenant's keys can read it")
    status: Literal["pending", "done", "failed"] = Field(
        description="done: the verdict is in `verdict`; failed: the worker dead-lettered it (`failure`)"
    )
    tenant: str
    idempotency_key: str | None = Field(description="the client's Idempotency-Key, if it sent one")
    content_id: str
    audio_uri: str
    sha256: str | None
    created_at: datetime
    verdict: dict[str, Any] | None = Field(description="the worker's Verdict (schemas/verdict.schema.json)")
    failure: FailureOut | None = Field(
        default=None, description="why the worker could not score it (its dead letter), when status is failed"
    )


class UsageHour(BaseModel):
    hour: datetime
    requests: int
    audio_seconds: float


class ScoredHour(BaseModel):
    hour: datetime
    uploads: int
    audio_seconds_scored: float
    dead_letters: int


class TenantScored(BaseModel):
    """The tenant's scored audio from the reporting pipeline (reporting.metering_hourly): what
    the workers scored for this tenant from every source, per closed hour."""

    uploads: int
    audio_seconds_scored: float
    dead_letters: int
    hours: list[ScoredHour]


class UsageOut(BaseModel):
    key_id: str
    tenant: str
    start: datetime
    end: datetime
    requests: int = Field(description="accepted detections (a repeated Idempotency-Key is not counted)")
    audio_seconds: float = Field(description="seconds of uploaded audio (0 for audio_url detections)")
    hours: list[UsageHour]
    tenant_scored: TenantScored | None = Field(
        default=None,
        description="the tenant's scored audio per closed hour (reporting.metering_hourly), the billing "
        "quantity; null where no reporting pipeline writes to this database",
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


def _out(detection: Detection, verdict: bytes | None, failure: Failure | None = None) -> DetectionOut:
    if verdict is not None:
        failure = None  # a replay that scored it: the verdict wins
    return DetectionOut(
        id=detection.id,
        status="done" if verdict is not None else "failed" if failure is not None else "pending",
        tenant=detection.tenant,
        idempotency_key=detection.client_key,
        content_id=detection.content_id,
        audio_uri=detection.audio_uri,
        sha256=detection.sha256,
        created_at=detection.created_at,
        verdict=json.loads(verdict) if verdict is not None else None,
        failure=None
        if failure is None
        else FailureOut(
            category=failure.category,
            reason=failure.reason,
            error_class=failure.error_class,
            failed_at=_aware(failure.failed_at),
        ),
    )


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer agk_<key id>_<secret>")


def _prefer_wait(prefer: str | None, cap: float) -> float:
    if not prefer:
        return 0.0
    match = _WAIT.search(prefer)
    return min(float(match.group(1)), cap) if match else 0.0


def create_app(context: ApiContext) -> FastAPI:
    settings = context.settings
    app = FastAPI(
        title="audioguard API",
        version=API_VERSION,
        description="Detect AI-generated audio: POST an upload or a storage URL, read the verdict back. "
        "Errors are application/problem+json with a stable `code` (docs/api.md).",
        responses={},
    )
    app.state.context = context
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        for name, value in getattr(request.state, "rate_headers", {}).items():
            response.headers.setdefault(name, value)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        API_REQUESTS.labels(route, str(response.status_code)).inc()
        API_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
        return response

    def client(scope: str) -> Callable[..., ApiKey]:
        def authenticate(
            request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
        ) -> ApiKey:
            if credentials is None:
                raise Problem(
                    401,
                    "missing_api_key",
                    "send Authorization: Bearer <api key>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                key = context.keys.verify(credentials.credentials)
            except RetryableError as error:
                raise Problem(
                    503, "unavailable", "key store unavailable", headers={"Retry-After": "5"}
                ) from error
            if key is None:
                raise Problem(
                    401,
                    "invalid_api_key",
                    "the API key is unknown, malformed or revoked",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            if scope not in key.scopes:
                raise Problem(403, "insufficient_scope", f"this key lacks the {scope} scope")
            decision = context.limiter.hit(key.key_id)
            request.state.rate_headers = decision.headers()
            if not decision.allowed:
                API_RATE_LIMITED.labels(key.tenant).inc()
                raise Problem(
                    429,
                    "rate_limited",
                    f"over {context.limiter.rate:g} requests/s (burst {context.limiter.burst}) for this key",
                    headers=decision.headers(),
                )
            return key

        return authenticate

    writer = client("detections:write")
    reader = client("detections:read")
    errors: dict[int | str, dict[str, Any]] = {
        code: PROBLEM_SCHEMA for code in (401, 403, 404, 409, 411, 413, 415, 422, 429, 503)
    }

    def _verdict(detection: Detection) -> bytes | None:
        try:
            return context.store.get(detection.tenant, detection.idempotency_key)
        except RetryableError as error:
            raise Problem(
                503, "unavailable", "verdict store unavailable", headers={"Retry-After": "2"}
            ) from error

    def _failure(detection: Detection) -> Failure | None:
        try:
            return context.detections.failure(detection)
        except RetryableError as error:
            raise Problem(503, "unavailable", "database unavailable", headers={"Retry-After": "5"}) from error

    def _answer(
        detection: Detection,
        verdict: bytes | None,
        failure: Failure | None = None,
        *,
        waited: float | None = None,
    ) -> JSONResponse:
        body = _out(detection, verdict, failure).model_dump(mode="json")
        headers = {"Location": f"/v1/detections/{detection.id}"}
        if waited is not None:
            headers["Preference-Applied"] = f"wait={waited:g}"
        done = verdict is not None or failure is not None
        return JSONResponse(body, status_code=200 if done else 202, headers=headers)

    def _publish(detection: Detection, value: bytes) -> Detection:
        record = OutRecord(
            tenant=detection.tenant,
            destination="arrivals",
            key=detection.idempotency_key.encode(),
            value=value,
        )
        timeout = settings.api.publish_timeout_seconds
        try:
            future = context.sink.publish(record)
            context.sink.flush(timeout)
            future.result(timeout)
        except (MessageRejected, RetryableError, FatalError, TimeoutError) as error:
            log.warning("publishing detection %s failed: %s", detection.id, error)
            raise Problem(
                503,
                "pipeline_unavailable",
                "the arrival could not be published now; retry with the same Idempotency-Key",
                headers={"Retry-After": "5"},
            ) from error
        arrival_sha256 = hashlib.sha256(value).hexdigest()
        context.detections.mark_published(detection.id, arrival_sha256)
        return replace(detection, arrival_sha256=detection.arrival_sha256 or arrival_sha256)

    def _record(**fields: Any) -> tuple[Detection, bool]:
        try:
            return context.detections.create_or_get(**fields)
        except IdempotencyConflict as conflict:
            raise Problem(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
                detection_id=str(conflict),
            ) from conflict
        except RetryableError as error:
            raise Problem(503, "unavailable", "database unavailable", headers={"Retry-After": "5"}) from error

    def _upload_base(tenant: str) -> str:
        if settings.api.upload_uri:
            return settings.api.upload_uri.format(tenant=tenant).rstrip("/")
        roots = settings.storage.tenant_file_roots.get(tenant) or settings.storage.file_roots
        if not roots:
            raise Problem(503, "storage_not_configured", f"no storage is configured for tenant {tenant}")
        return f"file://{Path(roots[0]).resolve()}/api"

    def _backpressure(tenant: str) -> None:
        assert context.lag is not None and settings.api.max_tenant_lag_messages is not None
        try:
            lag = context.lag.lag(tenant)
        except Exception as error:  # noqa: BLE001 - a broker hiccup must not refuse detections
            log.warning("cannot measure the lag of %s, not refusing: %s", tenant, error)
            return
        if lag is not None and lag > settings.api.max_tenant_lag_messages:
            raise Problem(
                503,
                "pipeline_backpressure",
                f"the workers are {lag} arrivals behind on this tenant (bound "
                f"{settings.api.max_tenant_lag_messages}); retry later",
                headers={"Retry-After": "5"},
            )

    def _callback(url: str | None) -> str | None:
        if url is None:
            return None
        try:
            check_callback_url(url, allow_private=settings.api.webhook_allow_private_hosts)
        except CallbackRefused as refused:
            raise Problem(422, refused.code, refused.detail) from refused
        return url

    def _accept_upload(
        key: ApiKey, part: UploadFile, content_id: str | None, client_key: str | None, callback: str | None
    ) -> tuple[Detection, bool, bytes]:
        callback = _callback(callback)
        data = part.file.read()
        try:
            decoded = decode_with_limits(data, settings.limits, max_bytes=settings.storage.max_bytes)
        except PoisonMessage as error:
            raise Problem(422, error.reason, str(error.message)) from error
        if context.audio_limiter is not None:
            spent = context.audio_limiter.hit(key.key_id, cost=decoded.duration_seconds)
            if not spent.allowed:
                API_RATE_LIMITED.labels(key.tenant).inc()
                raise Problem(
                    429,
                    "audio_rate_limited",
                    f"over {context.audio_limiter.rate:g} audio seconds/s (burst "
                    f"{context.audio_limiter.burst} s) for this key",
                    headers={"Retry-After": spent.headers().get("Retry-After", "1")},
                )
        sha = hashlib.sha256(data).hexdigest()
        suffix = Path(part.filename or "").suffix.lower()
        uri = f"{_upload_base(key.tenant)}/{sha}{suffix if _SUFFIX.match(suffix) else ''}"
        try:
            context.storage.resolve(uri, key.tenant)
        except PoisonMessage as error:
            raise Problem(
                503, "storage_not_configured", f"the upload location is not the tenant's: {error.message}"
            ) from error
        context.storage.put(data, uri)
        detection, created = _record(
            tenant=key.tenant,
            client_key=client_key,
            request_sha256=sha,
            content_id=content_id or f"upload-{sha[:16]}",
            audio_uri=uri,
            sha256=sha,
            byte_size=len(data),
            key_id=key.key_id,
            audio_seconds=decoded.duration_seconds,
            callback_url=callback,
        )
        return (
            detection,
            created,
            arrival_for(
                key.tenant, uri, data, key=detection.idempotency_key, content_id=detection.content_id
            ),
        )

    def _accept_url(
        key: ApiKey, body: DetectionUrlRequest, client_key: str | None
    ) -> tuple[Detection, bool, bytes]:
        callback = _callback(body.callback_url)
        scheme = body.audio_url.split("://", 1)[0].lower() if "://" in body.audio_url else ""
        if scheme not in URL_SCHEMES:
            raise Problem(
                422,
                "unsupported_url_scheme",
                f"audio_url must be one of {', '.join(s + '://' for s in URL_SCHEMES)} in the tenant's "
                "storage; the API never fetches other URLs",
            )
        try:
            context.storage.resolve(body.audio_url, key.tenant)
        except PoisonMessage as error:
            raise Problem(422, error.reason, str(error.message)) from error
        fingerprint = hashlib.sha256(body.audio_url.encode()).hexdigest()
        content_id = body.content_id or f"url-{fingerprint[:16]}"
        detection, created = _record(
            tenant=key.tenant,
            client_key=client_key,
            request_sha256=fingerprint,
            content_id=content_id,
            audio_uri=body.audio_url,
            sha256=None,
            byte_size=None,
            key_id=key.key_id,
            callback_url=callback,
        )
        return (
            detection,
            created,
            arrival_for_uri(
                key.tenant, body.audio_url, key=detection.idempotency_key, content_id=detection.content_id
            ),
        )

    @app.post(
        "/v1/detections",
        response_model=DetectionOut,
        status_code=202,
        summary="Submit audio for detection",
        responses={
            200: {"model": DetectionOut, "description": "The verdict was ready within Prefer: wait"},
            **errors,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                                "content_id": {"type": "string", "maxLength": 200},
                                "callback_url": {"type": "string", "maxLength": 2048},
                            },
                        }
                    },
                    "application/json": {"schema": DetectionUrlRequest.model_json_schema()},
                },
            }
        },
    )
    async def create_detection(
        request: Request,
        key: Annotated[ApiKey, Depends(writer)],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                pattern=r"^[!-~]{1,160}$",
                description="The same key (per tenant) always names the same detection",
            ),
        ] = None,
        prefer: Annotated[
            str | None, Header(description="wait=N: answer 200 with the verdict if ready within N s")
        ] = None,
    ) -> Response:
        if context.lag is not None:
            await run_in_threadpool(_backpressure, key.tenant)
        length = request.headers.get("content-length")
        if length is None:
            raise Problem(411, "length_required", "send Content-Length (chunked uploads are not accepted)")
        if not length.isdigit() or int(length) > settings.api.max_body_bytes:
            raise Problem(413, "body_too_large", f"the body exceeds {settings.api.max_body_bytes} bytes")
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == "multipart/form-data":
            try:
                form = await request.form(
                    max_files=1, max_fields=4, max_part_size=settings.api.max_body_bytes
                )
            except StarletteHTTPException as error:
                raise Problem(422, "malformed_multipart", str(error.detail)) from error
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise Problem(422, "missing_file", "the multipart body needs a `file` part")
            part_type = (part.content_type or "application/octet-stream").split(";", 1)[0].strip().lower()
            if part_type not in AUDIO_TYPES:
                raise Problem(
                    415, "unsupported_media_type", f"file part of type {part_type[:60]!r} is not audio"
                )
            content_id = form.get("content_id")
            if content_id is not None and (
                not isinstance(content_id, str) or not 1 <= len(content_id) <= 200
            ):
                raise Problem(422, "invalid_request", "content_id must be 1..200 characters")
            callback = form.get("callback_url")
            if callback is not None and not isinstance(callback, str):
                raise Problem(422, "invalid_request", "callback_url must be a text field")
            detection, created, arrival = await run_in_threadpool(
                _accept_upload, key, part, content_id, idempotency_key, callback
            )
        elif media == "application/json":
            try:
                body = DetectionUrlRequest.model_validate_json(await request.body())
            except ValueError as error:
                raise Problem(422, "invalid_request", str(error).splitlines()[0][:300]) from error
            detection, created, arrival = await run_in_threadpool(_accept_url, key, body, idempotency_key)
        else:
            raise Problem(
                415,
                "unsupported_media_type",
                "send multipart/form-data (a file) or application/json (audio_url)",
            )
        if created or detection.published_at is None:
            detection = await run_in_threadpool(_publish, detection, arrival)
        wait = _prefer_wait(prefer, settings.api.max_wait_seconds)
        deadline = time.monotonic() + wait
        verdict = await run_in_threadpool(_verdict, detection)
        failure = None if verdict is not None else await run_in_threadpool(_failure, detection)
        checked = time.monotonic()
        while verdict is None and failure is None and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            verdict = await run_in_threadpool(_verdict, detection)
            if verdict is None and time.monotonic() - checked >= _FAILURE_POLL_SECONDS:
                failure = await run_in_threadpool(_failure, detection)
                checked = time.monotonic()
        return _answer(detection, verdict, failure, waited=wait if prefer else None)

    @app.get(
        "/v1/detections/{detection_id}",
        response_model=DetectionOut,
        summary="A detection's status and verdict",
        responses={202: {"model": DetectionOut, "description": "Still pending"}, **errors},
    )
    def get_detection(detection_id: str, key: Annotated[ApiKey, Depends(reader)]) -> Response:
        detection = context.detections.get(key.tenant, detection_id) if len(detection_id) <= 64 else None
        if detection is None:
            raise Problem(404, "not_found", "no such detection")
        verdict = _verdict(detection)
        failure = None if verdict is not None else _failure(detection)
        body = _out(detection, verdict, failure).model_dump(mode="json")
        return JSONResponse(body, status_code=200)

    @app.get(
        "/v1/usage",
        response_model=UsageOut,
        summary="This client's metered usage per hour",
        responses={**errors},
    )
    def usage(
        key: Annotated[ApiKey, Depends(reader)],
        start: Annotated[
            datetime | None, Query(alias="from", description="inclusive; default: 24 h ago")
        ] = None,
        end: Annotated[datetime | None, Query(alias="to", description="exclusive; default: now")] = None,
    ) -> UsageOut:
        now = datetime.now(UTC)
        end = _aware(end) if end is not None else now
        start = _aware(start) if start is not None else end - timedelta(hours=24)
        if start >= end or end - start > timedelta(days=366):
            raise Problem(422, "invalid_range", "`from` must be before `to`, at most 366 days apart")
        try:
            rows = context.detections.usage(key.key_id, start, end)
            scored_rows = context.detections.tenant_scored(key.tenant, start, end)
        except RetryableError as error:
            raise Problem(503, "unavailable", "database unavailable", headers={"Retry-After": "5"}) from error
        hours = [UsageHour(hour=h, requests=r, audio_seconds=round(a, 3)) for h, r, a in rows]
        scored = None
        if scored_rows is not None:
            scored_hours = [
                ScoredHour(hour=h, uploads=u, audio_seconds_scored=round(a, 3), dead_letters=d)
                for h, u, a, d in scored_rows
            ]
            scored = TenantScored(
                uploads=sum(h.uploads for h in scored_hours),
                audio_seconds_scored=round(sum(h.audio_seconds_scored for h in scored_hours), 3),
                dead_letters=sum(h.dead_letters for h in scored_hours),
                hours=scored_hours,
            )
        return UsageOut(
            key_id=key.key_id,
            tenant=key.tenant,
            start=start,
            end=end,
            requests=sum(h.requests for h in hours),
            audio_seconds=round(sum(h.audio_seconds for h in hours), 3),
            hours=hours,
            tenant_scored=scored,
        )

    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        summary="Readiness: database and verdict store reachable",
        responses={503: {"model": Health}},
    )
    def readyz() -> Response:
        checks: dict[str, str] = {}
        for name, check in (("database", context.detections.check), ("store", context.store.check)):
            try:
                check()
                checks[name] = "ok"
            except (RetryableError, FatalError) as error:
                checks[name] = error.reason
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            Health(status="ready" if ready else "not_ready", checks=checks).model_dump(),
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app (committed as api/openapi.json; a test keeps them equal).
    Building it touches no server: the handlers' collaborators are never called."""
    idle = ApiContext(Settings(), None, None, None, None, None, None)  # type: ignore[arg-type]
    return create_app(idle).openapi()


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def write_openapi(path: Path = OPENAPI_PATH) -> Path:
    path.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
