"""Storage confinement: an event's URI can only reach its own tenant's storage."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from services.errors import PoisonMessage
from services.settings import StorageSettings
from services.storage import AudioStorage


@pytest.fixture
def layout(tmp_path: Path) -> tuple[AudioStorage, Path, Path]:
    acme, globex = tmp_path / "acme", tmp_path / "globex"
    acme.mkdir()
    globex.mkdir()
    (acme / "ok.wav").write_bytes(b"RIFFdata")
    (globex / "secret.wav").write_bytes(b"globex's audio")
    (tmp_path / "outside.wav").write_bytes(b"outside")
    storage = AudioStorage(
        StorageSettings(tenant_file_roots={"acme": [acme], "globex": [globex]}, max_bytes=100)
    )
    return storage, acme, globex


def reason(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(PoisonMessage) as caught:
        call()
    return caught.value.reason


def test_reads_inside_the_tenant_root(layout):
    storage, acme, _ = layout
    assert storage.fetch(f"file://{acme}/ok.wav", "acme") == b"RIFFdata"
    assert storage.fetch(f"file://localhost{acme}/ok.wav", "acme") == b"RIFFdata"


def test_another_tenants_root_is_refused(layout):
    storage, _, globex = layout
    assert reason(lambda: storage.fetch(f"file://{globex}/secret.wav", "acme")) == "uri_outside_roots"


@pytest.mark.parametrize(
    "suffix",
    ["/../outside.wav", "/../globex/secret.wav", "/%2e%2e/outside.wav", "/sub/../../outside.wav"],
)
def test_traversal_is_refused(layout, suffix):
    storage, acme, _ = layout
    assert reason(lambda: storage.fetch(f"file://{acme}{suffix}", "acme")) == "path_traversal"


def test_symlink_escape_is_refused(layout, tmp_path):
    storage, acme, _ = layout
    os.symlink(tmp_path / "outside.wav", acme / "link.wav")
    os.symlink(tmp_path / "globex", acme / "dirlink")
    assert reason(lambda: storage.fetch(f"file://{acme}/link.wav", "acme")) == "uri_outside_roots"
    assert reason(lambda: storage.fetch(f"file://{acme}/dirlink/secret.wav", "acme")) == "uri_outside_roots"


def test_remote_host_unknown_scheme_and_missing_file(layout):
    storage, acme, _ = layout
    assert reason(lambda: storage.fetch(f"file://evil.example{acme}/ok.wav", "acme")) == "uri_outside_roots"
    assert reason(lambda: storage.fetch("http://example.com/a.wav", "acme")) == "unsupported_scheme"
    assert reason(lambda: storage.fetch("gs://bucket/a.wav", "acme")) == "unsupported_scheme"
    assert reason(lambda: storage.fetch(f"file://{acme}/nope.wav", "acme")) == "missing_object"
    assert reason(lambda: storage.fetch(f"file://{acme}", "acme")) == "missing_object"


def test_a_tenant_without_roots_reads_nothing(layout):
    storage, acme, _ = layout
    assert reason(lambda: storage.fetch(f"file://{acme}/ok.wav", "initech")) == "uri_outside_roots"


def test_a_file_that_grew_after_its_size_was_read_is_read_whole_and_still_bounded(layout, monkeypatch):
    """The read is sized by fstat (a 50 MiB read buffer per upload cost more than the read);
    a file longer than fstat said is still read to its end, and the limit still holds."""
    storage, acme, _ = layout
    (acme / "grown.wav").write_bytes(b"y" * 60)
    (acme / "huge.wav").write_bytes(b"z" * 150)
    real_fstat = os.fstat

    class Stale:
        def __init__(self, fd: int) -> None:
            self.st_size = 10 if fd > 2 else real_fstat(fd).st_size

    monkeypatch.setattr("services.storage.os.fstat", Stale)
    assert storage.fetch(f"file://{acme}/grown.wav", "acme") == b"y" * 60
    assert reason(lambda: storage.fetch(f"file://{acme}/huge.wav", "acme")) == "oversize"


def test_size_limit_and_sha256(layout):
    storage, acme, _ = layout
    (acme / "big.wav").write_bytes(b"x" * 101)
    assert reason(lambda: storage.fetch(f"file://{acme}/big.wav", "acme")) == "oversize"
    good = hashlib.sha256(b"RIFFdata").hexdigest()
    assert storage.fetch(f"file://{acme}/ok.wav", "acme", expected_sha256=good) == b"RIFFdata"
    bad = hashlib.sha256(b"other").hexdigest()
    assert (
        reason(lambda: storage.fetch(f"file://{acme}/ok.wav", "acme", expected_sha256=bad))
        == "sha256_mismatch"
    )


def test_s3_is_limited_to_the_tenants_locations(layout):
    storage = AudioStorage(StorageSettings(tenant_s3_locations={"acme": ["acme-audio/uploads/"]}))
    assert reason(lambda: storage.fetch("s3://globex-audio/uploads/a.wav", "acme")) == "uri_outside_roots"
    assert reason(lambda: storage.fetch("s3://acme-audio/other/a.wav", "acme")) == "uri_outside_roots"
    assert reason(lambda: storage.fetch("s3://acme-audio/uploads/../x", "acme")) == "path_traversal"
