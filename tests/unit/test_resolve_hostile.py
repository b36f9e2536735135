"""The URI resolver (services.storage.AudioStorage.resolve / fetch) on hostile URIs: every input
resolves inside the tenant's own roots or buckets, or raises a PoisonMessage with a known
reason; never another exception (issue 15). Random text, and URIs built from the pieces that
break resolvers: traversal, percent-encoding, unicode, NUL, schemes, userinfo, huge strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.errors import PoisonMessage
from services.settings import StorageSettings
from services.storage import AudioStorage

RESOLVE_REASONS = {"unsupported_scheme", "malformed_uri", "path_traversal", "uri_outside_roots"}
FETCH_REASONS = RESOLVE_REASONS | {"missing_object", "oversize"}
BUCKET = "acme-audio"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AudioStorage, Path, Path]]:
    base = tmp_path_factory.mktemp("resolve")
    own, other = base / "acme", base / "globex"
    for root in (own, other):
        (root / "sub").mkdir(parents=True)
        (root / "a.wav").write_bytes(b"RIFF-" + root.name.encode())
        (root / "sub" / "ü ñ.wav").write_bytes(b"RIFF-unicode")
    (own / "escape.wav").symlink_to(other / "a.wav")  # inside as written, outside for real
    (own / "big.wav").write_bytes(b"\0" * 4096)
    storage = AudioStorage(
        StorageSettings(
            tenant_file_roots={"acme": [own], "globex": [other]},
            tenant_s3_locations={"acme": [f"{BUCKET}/uploads/"]},
            max_bytes=1024,
        )
    )
    yield storage, own, other


def _inside(path: str, root: Path) -> bool:
    real = Path(os.path.realpath(root))
    candidate = Path(path)
    return any(candidate == r or r in candidate.parents for r in (root, real))


def check_resolve(storage: AudioStorage, own: Path, uri: str) -> str:
    try:
        location = storage.resolve(uri, "acme")
    except PoisonMessage as error:
        assert error.reason in RESOLVE_REASONS, (uri, error)
        assert " at 0x" not in str(error)
        return error.reason
    if location.scheme == "file":
        assert _inside(location.path, own), (uri, location)
        assert ".." not in location.path.split("/") and "\0" not in location.path
    else:
        assert location.scheme == "s3" and location.bucket == BUCKET, (uri, location)
        assert location.path.startswith("uploads/") and ".." not in location.path.split("/")
    return "ok"


def check_fetch(storage: AudioStorage, own: Path, uri: str) -> str:
    if uri.lower().startswith("s3:"):
        return check_resolve(storage, own, uri)  # fetching would need a server: resolve only
    try:
        data = storage.fetch(uri, "acme")
    except PoisonMessage as error:
        assert error.reason in FETCH_REASONS, (uri, error)
        return error.reason
    # whatever came back is one of the tenant's own files, never the other tenant's
    assert data in (b"RIFF-acme", b"RIFF-unicode"), (uri, data[:20])
    return "ok"


SEGMENTS = [
    "..",
    ".",
    "",
    "%2e%2e",
    "%2E%2E",
    "%252e%252e",
    "%00",
    "\x00",
    "%2F",
    "%2f..%2f",
    "a.wav",
    "sub",
    "ü ñ.wav",
    "\u202e",
    "\ud800",
    "%ff%fe",
    "con",
    "a" * 300,
    "escape.wav",
    "big.wav",
    "globex",
    "acme",
    "\\..\\",
    "?x=1",
    "#frag",
    "~",
]
SCHEMES = [
    "file",
    "FILE",
    "s3",
    "S3",
    "gs",
    "http",
    "https",
    "ftp",
    "data",
    "javascript",
    "",
    "fi le",
    "file:",
]
HOSTS = ["", "localhost", "LOCALHOST", "evil.example", "user@localhost", "user:pw@", "[::1", "[::1]", "%00"]


@st.composite
def structured_uris(draw: st.DrawFn, own: Path, other: Path) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    separator = draw(st.sampled_from(["://", ":", ":/", ":///", "//"]))
    host = draw(st.sampled_from(HOSTS + [BUCKET]))
    base = draw(st.sampled_from([str(own), str(other), "", "/etc", "/", f"/{BUCKET}/uploads", "uploads"]))
    segments = draw(st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=12), max_size=8))
    return f"{scheme}{separator}{host}{base}/" + "/".join(segments)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_structured_uris_resolve_inside_the_roots_or_to_a_known_reason(
    roots: tuple[AudioStorage, Path, Path], data: st.DataObject
) -> None:
    storage, own, other = roots
    check_fetch(storage, own, data.draw(structured_uris(own, other)))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_random_text_resolves_or_is_refused(uri: str) -> None:
    storage = AudioStorage(StorageSettings(tenant_file_roots={"acme": [Path("/srv/acme")]}))
    check_resolve(storage, Path("/srv/acme"), uri)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_random_paths_under_a_file_scheme_resolve_or_are_refused(
    roots: tuple[AudioStorage, Path, Path], tail: str
) -> None:
    storage, own, _ = roots
    check_fetch(storage, own, f"file://{own}/{tail}")
    check_fetch(storage, own, f"file://{tail}")


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("file://[::1/a.wav", "malformed_uri"),  # urlsplit raised ValueError here before
        ("file:///srv/%ED%A0%80.wav", "uri_outside_roots"),  # undecodable bytes: replaced, outside
        ("file:relative/a.wav", "uri_outside_roots"),
        ("file://user@localhost/a.wav", "uri_outside_roots"),
        ("s3://user@acme-audio/uploads/a.wav", "uri_outside_roots"),
        ("s3://acme-audio/uploads/../private/a.wav", "path_traversal"),
        ("s3://acme-audio/private/a.wav", "uri_outside_roots"),
        ("gs://acme-audio/uploads/a.wav", "unsupported_scheme"),
        ("\x00file:///a", "malformed_uri"),
        ("file:///srv/ac\nme/a.wav", "malformed_uri"),  # urlsplit drops the newline
    ],
)
def test_known_hostile_uris(roots: tuple[AudioStorage, Path, Path], uri: str, reason: str) -> None:
    storage, own, _ = roots
    assert check_resolve(storage, own, uri) == reason


def test_what_only_the_file_system_can_tell(roots: tuple[AudioStorage, Path, Path]) -> None:
    storage, own, _ = roots
    assert check_fetch(storage, own, f"file://{own}/escape.wav") == "uri_outside_roots"  # a symlink out
    assert check_fetch(storage, own, f"file://{own}/big.wav") == "oversize"
    assert check_fetch(storage, own, f"file://{own}/{'a' * 300}.wav") == "missing_object"  # ENAMETOOLONG
    assert check_fetch(storage, own, f"file://{own}/{'a' * 5000}.wav") == "malformed_uri"  # > PATH_MAX
    assert check_fetch(storage, own, f"file://{own}/a.wav/x") == "missing_object"  # ENOTDIR
    assert check_fetch(storage, own, f"file://{own}/sub/%C3%BC%20%C3%B1.wav") == "ok"
    assert check_fetch(storage, own, f"file://localhost{own}/./sub//../a.wav") == "path_traversal"
    assert check_fetch(storage, own, f"file://{own}/sub/./../sub/%2e%2e/a.wav") == "path_traversal"


def test_huge_uris_are_refused_quickly(roots: tuple[AudioStorage, Path, Path]) -> None:
    storage, own, _ = roots
    # 500,000 segments used to keep os.path.realpath busy for hours (quadratic in the segments)
    assert check_fetch(storage, own, f"file://{own}/" + "x/" * 4000) == "malformed_uri"
    assert check_fetch(storage, own, f"file://{own}/" + "x/" * 500_000) == "malformed_uri"
    assert check_resolve(storage, own, "s3://" + "b" * 10_000 + "/k") == "uri_outside_roots"
    assert check_resolve(storage, own, "s3://" + "b" * 1_000_000 + "/k") == "malformed_uri"
    assert check_resolve(storage, own, "x" * 1_000_000 + "://a") == "malformed_uri"
