"""Audio storage by URI: file:// confined to configured roots, s3:// through boto3.

A URI comes from an untrusted event, so every fetch is confined per tenant:
- file://  only below the tenant's roots (`storage.tenant_file_roots[tenant]`, else the
           shared `storage.file_roots`); `..` segments are refused outright and the real
           path (symlinks resolved) must stay inside a root, so a link cannot escape.
- s3://    only buckets / prefixes listed for the tenant (`storage.tenant_s3_locations`);
           an unlisted tenant may read no bucket at all.
Sizes are bounded before the bytes are read, and the sha256 is checked when the event
gives one. Every refusal is a `PoisonMessage` with a reason code; network trouble is a
`RetryableError`. boto3 is imported here and in the Kinesis adapter only.

`DeadLetterPayloads` is the other direction: the tenant's dead-letter area
(`dlq.payload_uri`), where a payload too large for its DLQ record is written, keyed by its
sha256 (the same poison stored twice is one object), and read back for a replay, confined to
that tenant's area and checked against the sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from services.errors import PoisonMessage, RetryableError
from services.settings import StorageSettings

__all__ = ["AudioStorage", "DeadLetterPayloads", "Location"]

_SCHEMES = ("file", "s3", "gs")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: far above any real URI (the arrival contract allows 2,048 characters), so parsing stays cheap
MAX_URI_CHARS = 16_384
_PATH_MAX = 4096  # Linux's PATH_MAX, bytes including the final NUL


class Location(NamedTuple):
    """A resolved audio URI: ("file", "", absolute path) or ("s3", bucket, key)."""

    scheme: str
    bucket: str
    path: str


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class AudioStorage:
    """Fetches (and, for the platform-side CLI, stores) audio objects."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self._s3_client: Any = None
        self._lock = threading.Lock()
        self._lexical: dict[str, list[str]] = {}

    # -- resolve: what a URI names, checked without touching the object -----------------
    def resolve(self, uri: str, tenant: str) -> Location:
        """Where `uri` points for `tenant`, or the PoisonMessage that refuses it.

        Lexical checks only (scheme, host, traversal, the tenant's roots or buckets), so the
        worker runs them on every arrival before the verdict store is asked: an event that
        repeats a known idempotency key is held to the same rules as a new one. `fetch`
        resolves again and then follows symlinks. Never raises anything but PoisonMessage.
        """
        if len(uri) > MAX_URI_CHARS:
            raise PoisonMessage("malformed_uri", f"audio_uri is longer than {MAX_URI_CHARS} characters")
        if _CONTROL.search(uri):
            # urlsplit would quietly drop tabs and newlines: read no URI other than the one written
            raise PoisonMessage("malformed_uri", "audio_uri contains control characters")
        try:
            parts = urlsplit(uri)
        except ValueError as exc:  # e.g. "file://[::1/a.wav": an unbalanced IPv6 host
            raise PoisonMessage("malformed_uri", "audio_uri is not a parseable URI") from exc
        if parts.scheme not in _SCHEMES:
            raise PoisonMessage(
                "unsupported_scheme", f"URI scheme {parts.scheme[:20]!r} is not one of {_SCHEMES}"
            )
        if parts.scheme == "file":
            return Location("file", "", self._resolve_file(parts.netloc, parts.path, tenant))
        if parts.scheme == "s3":
            key = parts.path.lstrip("/")
            self._resolve_s3(parts.netloc, key, tenant)
            return Location("s3", parts.netloc, key)
        raise PoisonMessage("unsupported_scheme", "gs:// storage is not configured on this worker")

    def _resolve_file(self, host: str, raw_path: str, tenant: str) -> str:
        if host not in ("", "localhost"):
            raise PoisonMessage("uri_outside_roots", "file:// URI names a remote host")
        path = unquote(raw_path)
        if "\x00" in path or any(segment == ".." for segment in path.split("/")):
            raise PoisonMessage("path_traversal", "file:// path contains '..' or NUL")
        try:
            encoded = os.fsencode(path)
        except UnicodeEncodeError as exc:  # a lone surrogate: no file system can name it
            raise PoisonMessage("malformed_uri", "file:// path is not encodable as a file name") from exc
        if not path.startswith("/"):
            raise PoisonMessage("uri_outside_roots", "file:// path is not absolute")
        if len(encoded) >= _PATH_MAX:
            # no system call could open it; resolving it anyway costs quadratic time in realpath
            raise PoisonMessage("malformed_uri", "file:// path is longer than the system's path limit")
        roots = self._lexical_roots(tenant)
        if not roots:
            raise PoisonMessage("uri_outside_roots", f"no file:// roots are configured for tenant {tenant}")
        normal = os.path.normpath(path)
        # string prefixes (each root ends in "/"): the loop thread runs this for every arrival
        if not any(normal == root[:-1] or normal.startswith(root) for root in roots):
            raise PoisonMessage("uri_outside_roots", "file:// path is outside the tenant's storage roots")
        return normal

    def _lexical_roots(self, tenant: str) -> list[str]:
        """Each root as written and as its real path: a path inside either spelling is inside.

        Cached per tenant (resolve runs on the worker's loop thread for every arrival, and
        realpath costs a system call per component); fetch() checks the real path afresh.
        """
        roots = self._lexical.get(tenant)
        if roots is None:
            configured = self.settings.tenant_file_roots.get(tenant, self.settings.file_roots)
            spellings = [Path(os.path.abspath(root)) for root in configured] + self._roots(tenant)
            roots = [str(root).rstrip("/") + "/" for root in spellings]
            self._lexical[tenant] = roots
        return roots

    def _resolve_s3(self, bucket: str, key: str, tenant: str) -> None:
        if not bucket or not key or any(segment == ".." for segment in key.split("/")):
            raise PoisonMessage("path_traversal", "s3:// URI needs a bucket and a key without '..'")
        if not self._allowed_s3(bucket, key, tenant):
            raise PoisonMessage("uri_outside_roots", f"the s3:// bucket is not a location of tenant {tenant}")

    # -- fetch -------------------------------------------------------------------------
    def fetch(
        self,
        uri: str,
        tenant: str,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> bytes:
        location = self.resolve(uri, tenant)
        if location.scheme == "file":
            data = self._fetch_file(location.path, tenant)
        else:
            data = self._fetch_s3(location.bucket, location.path)
        # the size first: a wrong size is the clearer message, and the digest would differ too
        if expected_size is not None and len(data) != expected_size:
            raise PoisonMessage(
                "byte_size_mismatch",
                f"object has {len(data)} bytes, the event's byte_size says {expected_size}",
            )
        if expected_sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected_sha256:
                raise PoisonMessage("sha256_mismatch", f"object sha256 {digest} != event's {expected_sha256}")
        return data

    def _roots(self, tenant: str) -> list[Path]:
        roots = self.settings.tenant_file_roots.get(tenant, self.settings.file_roots)
        return [Path(os.path.realpath(root)) for root in roots]

    def _fetch_file(self, path: str, tenant: str) -> bytes:
        # resolve() checked the path as written; a symlink must not lead out of the roots either
        real = Path(os.path.realpath(path))
        if not any(_inside(real, root) for root in self._roots(tenant)):
            raise PoisonMessage("uri_outside_roots", "file:// path is outside the tenant's storage roots")
        try:
            size = real.stat().st_size
            if not real.is_file():
                raise PoisonMessage("missing_object", "file:// path is not a regular file")
            self._check_size(size)
            with open(real, "rb") as handle:
                # at most one byte past the limit, and no more than the file holds: read(n)
                # allocates n bytes first, and max_bytes (50 MiB) per upload cost ~0.2 ms of CPU
                # on the fetch threads against ~0.03 ms for the read itself
                ceiling = min(os.fstat(handle.fileno()).st_size, self.settings.max_bytes)
                data = handle.read(ceiling + 1)
                if len(data) > ceiling:  # it grew since fstat: read on to the limit, as before
                    data += handle.read(self.settings.max_bytes + 1 - len(data))
        except FileNotFoundError as exc:
            raise PoisonMessage("missing_object", "no such file") from exc
        except PermissionError as exc:
            raise PoisonMessage("missing_object", "file is not readable") from exc
        except OSError as exc:  # a name too long, a loop of links, not a directory on the way
            raise PoisonMessage("missing_object", f"file cannot be opened ({exc.strerror})") from exc
        self._check_size(len(data))
        return data

    def _check_size(self, size: int) -> None:
        if size > self.settings.max_bytes:
            raise PoisonMessage(
                "oversize", f"object of {size} bytes exceeds the {self.settings.max_bytes}-byte limit"
            )

    def _allowed_s3(self, bucket: str, key: str, tenant: str) -> bool:
        for location in self.settings.tenant_s3_locations.get(tenant, []):
            allowed_bucket, _, prefix = location.partition("/")
            if bucket == allowed_bucket and key.startswith(prefix):
                return True
        return False

    def _s3(self) -> Any:
        with self._lock:
            if self._s3_client is None:
                import boto3
                from botocore.config import Config

                timeout = self.settings.timeout_seconds
                self._s3_client = boto3.client(
                    "s3",
                    endpoint_url=self.settings.s3_endpoint_url,
                    region_name=self.settings.s3_region,
                    config=Config(
                        connect_timeout=timeout,
                        read_timeout=timeout,
                        retries={"max_attempts": 2, "mode": "standard"},
                    ),
                )
            return self._s3_client

    def _fetch_s3(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._s3().head_object(Bucket=bucket, Key=key)
            self._check_size(int(head["ContentLength"]))
            body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
            data: bytes = body.read(self.settings.max_bytes + 1)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise PoisonMessage("missing_object", f"s3://{bucket}/{key} does not exist") from exc
            raise RetryableError("storage_unavailable", f"S3 error {code}: {exc}") from exc
        except BotoCoreError as exc:
            raise RetryableError("storage_unavailable", f"S3 unreachable: {exc}") from exc
        self._check_size(len(data))
        return data

    # -- store (the platform side: `audioguard publish`, the demo, tests) ----------------
    def put(self, data: bytes, uri: str) -> str:
        """Write `data` at `uri` (file:// or s3://) and return the URI."""
        parts = urlsplit(uri)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            path.parent.mkdir(parents=True, exist_ok=True)
            # write aside, then rename: a reader (a worker fetching the same content-addressed
            # upload that another request is rewriting) never sees a half-written file
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
            partial.write_bytes(data)
            os.replace(partial, path)
        elif parts.scheme == "s3":
            from botocore.exceptions import ClientError

            client = self._s3()
            try:
                client.head_bucket(Bucket=parts.netloc)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                client.create_bucket(Bucket=parts.netloc)
            client.put_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"), Body=data)
        else:
            raise ValueError(f"cannot store to {uri}")
        return uri


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DeadLetterPayloads:
    """The tenants' dead-letter areas: ``template`` is `dlq.payload_uri` (file:// or s3://,
    naming ``{tenant}``); a payload is stored at ``<area>/<sha256>``.

    `store` is idempotent (an object already there is not written again) and raises
    `RetryableError` when the area cannot be written; `load` raises `PoisonMessage`
    (``uri_outside_roots``, ``missing_object``, ``sha256_mismatch``) or `RetryableError`.
    """

    def __init__(self, storage: AudioStorage, template: str) -> None:
        if "{tenant}" not in template or not template.startswith(("file://", "s3://")):
            raise ValueError(
                f"dead-letter payload area {template!r}: a file:// or s3:// URI naming {{tenant}}"
            )
        self._storage = storage
        self._template = template.rstrip("/")

    def area(self, tenant: str) -> str:
        """The tenant's dead-letter area, as a URI without a trailing slash."""
        return self._template.replace("{tenant}", tenant)

    def uri(self, tenant: str, sha256: str) -> str:
        return f"{self.area(tenant)}/{sha256}"

    def store(self, tenant: str, data: bytes) -> str:
        """Write `data` to the tenant's area (unless an object of that sha256 is there) and
        return its URI."""
        digest = hashlib.sha256(data).hexdigest()
        uri = self.uri(tenant, digest)
        parts = urlsplit(uri)
        if parts.scheme == "file":
            self._store_file(Path(unquote(parts.path)), data)
        else:
            self._store_s3(parts.netloc, parts.path.lstrip("/"), data)
        return uri

    def _store_file(self, path: Path, data: bytes) -> None:
        try:
            if path.is_file() and path.stat().st_size == len(data):
                return  # content-addressed: the same bytes are there already
            path.parent.mkdir(parents=True, exist_ok=True)
            # write-then-rename: a crash mid-write never leaves a short object under the sha256
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise RetryableError("payload_store_unavailable", f"cannot write {path}: {exc}") from exc

    def _store_s3(self, bucket: str, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._storage._s3()
        try:
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                if int(head["ContentLength"]) == len(data):
                    return
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NoSuchKey", "NotFound"):
                    raise
            client.put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise RetryableError(
                "payload_store_unavailable", f"cannot write s3://{bucket}/{key}: {exc}"
            ) from exc

    def load(self, tenant: str, uri: str, *, expected_sha256: str) -> bytes:
        """The payload at `uri`, which must be in the tenant's area and hash to `expected_sha256`."""
        if not _SHA256_RE.match(expected_sha256) or uri != self.uri(tenant, expected_sha256):
            # the URI comes from a DLQ record: read only the object this tenant's area holds for that hash
            raise PoisonMessage(
                "uri_outside_roots",
                f"{uri} is not the object {expected_sha256} of tenant {tenant}'s dead-letter area",
            )
        parts = urlsplit(uri)
        if parts.scheme == "file":
            try:
                data = Path(unquote(parts.path)).read_bytes()
            except FileNotFoundError as exc:
                raise PoisonMessage("missing_object", f"{uri} does not exist") from exc
            except OSError as exc:
                raise RetryableError("storage_unavailable", f"cannot read {uri}: {exc}") from exc
        else:
            data = self._load_s3(parts.netloc, parts.path.lstrip("/"))
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise PoisonMessage(
                "sha256_mismatch", f"{uri} has sha256 {digest}, the dead letter says {expected_sha256}"
            )
        return data

    def _load_s3(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._storage._s3().get_object(Bucket=bucket, Key=key)["Body"]
            data: bytes = body.read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise PoisonMessage("missing_object", f"s3://{bucket}/{key} does not exist") from exc
            raise RetryableError("storage_unavailable", f"S3 error {code}: {exc}") from exc
        except BotoCoreError as exc:
            raise RetryableError("storage_unavailable", f"S3 unreachable: {exc}") from exc
        return data
