"""Named evaluation sets from outside (`model gate --set NAME=DIR`): a tenant's long tail that the
built-in sets do not cover makes a candidate fail, and the gate names the tenant's slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.cli import main
from services.detector.training.gate import _read, extra_set
from services.errors import FatalError
from tests.support.models import NAME, biased_artifact, registry_with_champion

DEMO = Path(__file__).resolve().parents[2] / "services" / "demo_clips"
#: quiet Dutch speakers: the demo's bona fide nl takes at four playback levels
GAINS = (1.0, 0.5, 0.25, 0.125)


def _tenant_set(directory: Path) -> Path:
    directory.mkdir()
    lines = ["file,label,gain"]
    for take in ("13-bona_fide-human-nl.flac", "14-bona_fide-human-nl.flac", "15-bona_fide-human-nl.flac"):
        samples = _read(DEMO / take)
        for gain in GAINS:
            name = f"{take[:2]}-x{gain}.wav"
            sf.write(directory / name, samples * gain, 16000)
            lines.append(f"{name},bona_fide,{gain}")
    (directory / "labels.csv").write_text("\n".join(lines) + "\n")
    return directory


def test_a_tenant_set_makes_the_candidate_fail_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = registry_with_champion(tmp_path / "r")
    # +1.0 on the calibrated logit: bona fide scores creep up, which on the demo clips turns one of
    # 15 human takes (score 0.28) into an error, too few for the gate to call, and on a set full of
    # takes like it, many
    registry.register(NAME, biased_artifact(tmp_path / "biased", 1.0, "biased"))  # 2
    tenant = _tenant_set(tmp_path / "acme-quiet-nl")
    where = ["model", "--registry", str(tmp_path / "r")]
    quick = ["--partial-pairs", "0", "--bootstrap", "300", "--data", str(tmp_path / "no-data-build")]

    assert main([*where, "gate", f"models:/{NAME}/2", *quick]) == 0, "the built-in sets alone let it pass"
    capsys.readouterr()

    assert main([*where, "gate", f"models:/{NAME}/2", *quick, "--set", f"acme-quiet-nl={tenant}"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED: slice acme-quiet-nl/all regressed by" in out
    gate = registry.get(NAME, 2).eval_results["gate"]
    assert "acme-quiet-nl/all" in gate["regressed"]
    assert not any(s.startswith("demo-clips/") for s in gate["regressed"])
    tenant_all = next(s for s in gate["slices"] if s["slice"] == "acme-quiet-nl/all")
    assert tenant_all["n"] == 3 * len(GAINS) and tenant_all["ci_low"] > gate["margin"]
    assert {s["slice"] for s in gate["slices"]} >= {f"acme-quiet-nl/gain={g}" for g in GAINS}


def test_a_bad_tenant_set_is_refused_with_its_row(tmp_path: Path) -> None:
    directory = tmp_path / "t"
    directory.mkdir()
    sf.write(directory / "a.wav", (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    (directory / "b.wav").write_bytes(b"not audio at all")
    (directory / "labels.csv").write_text("file,label\na.wav,bona_fide\nb.wav,synthetic\n")
    with pytest.raises(FatalError, match=r"labels.csv:3: b.wav: undecodable_audio"):
        extra_set("tenant-t", directory)
    (directory / "labels.csv").write_text("file,label\na.wav,fake\n")
    with pytest.raises(FatalError, match=r"labels.csv:2: label 'fake'"):
        extra_set("tenant-t", directory)
    with pytest.raises(FatalError, match="set name"):
        extra_set("demo-clips", directory)
    items = extra_set("tenant-t", _labels(directory, "file,label,channel\na.wav,bona_fide,phone\n"))
    assert [(i.truth, i.slices) for i in items] == [("bona_fide", ("tenant-t/all", "tenant-t/channel=phone"))]


def _labels(directory: Path, text: str) -> Path:
    (directory / "labels.csv").write_text(text)
    return directory
