"""The sealed generator family: its vocoder keeps the partials, its set stays out of every other
command's manifest, and its first look happens once. Built here on a small made-up data set of
tones (the real sealed set under data/detector/sealed is never scored by a test)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.detector.training.data import read_manifest, write_manifest
from services.detector.training.sealed import FAMILY, FIRST_LOOK, build_sealed, first_look, sms_vocode
from services.detector.training.train import load_clips

RATE = 16000


def _voice(f0: float, seconds: float, seed: int) -> np.ndarray:
    """Harmonics of a gliding f0 under a syllable-rate envelope, with a little noise."""
    t = np.arange(int(RATE * seconds)) / RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def test_the_vocoder_keeps_length_level_and_the_partials_but_not_the_waveform() -> None:
    t = np.arange(RATE) / RATE
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 880 * t + 1.0)
    y = sms_vocode(x, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.01)
    spectrum = np.abs(np.fft.rfft(y))
    strongest = sorted(np.argsort(spectrum)[::-1][:2] * RATE / y.size)
    assert strongest == pytest.approx([440.0, 880.0], abs=3.0)
    assert spectrum[440] / spectrum[880] == pytest.approx(1.5, rel=0.25)
    # its phases are its own: the waveform is not the take's
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.5
    again = sms_vocode(x, np.random.default_rng(0))
    assert np.array_equal(again, y), "seeded: the same clip every time"


def _made_up_data(root: Path) -> Path:
    """A data set of three test bona fide takes (and one train take that must not be used)."""
    data = root / "data"
    rows = []
    for i, (split, f0) in enumerate([("test", 110.0), ("test", 180.0), ("test", 240.0), ("train", 150.0)]):
        source = root / "sources" / f"take{i}.wav"
        source.parent.mkdir(parents=True, exist_ok=True)
        audio = _voice(f0, 2.0, i)
        sf.write(source, audio, RATE)
        clip = data / "clips" / f"bona{i}.flac"
        clip.parent.mkdir(parents=True, exist_ok=True)
        sf.write(clip, audio, RATE, subtype="PCM_16")
        rows.append(
            {
                "path": f"clips/bona{i}.flac",
                "split": split,
                "label": "bona_fide",
                "generator": "human",
                "speaker": f"s{i}",
                "language": "en",
                "source_file": str(source),
            }
        )
    write_manifest(data / "manifest.csv", rows)
    return data


def test_the_sealed_set_is_built_beside_the_manifest_and_looked_at_once(tmp_path: Path) -> None:
    data = _made_up_data(tmp_path)
    before = (data / "manifest.csv").read_bytes()
    with pytest.raises(SystemExit, match="no sealed set"):
        first_look(data, None)

    manifest = build_sealed(data)
    rows = list(csv.DictReader(manifest.open()))
    assert [r["split"] for r in rows] == ["sealed"] * 3, "one clip per test take, none from train"
    assert {r["generator"] for r in rows} == {FAMILY}
    assert {r["source_file"] for r in rows} == {str(tmp_path / "sources" / f"take{i}.wav") for i in range(3)}
    for row in rows:
        audio, rate = sf.read(manifest.parent / row["path"])
        assert rate == RATE and abs(audio.size / RATE - float(row["duration"])) < 1e-3
    build = json.loads((manifest.parent / "build.json").read_text())
    assert build["clips"] == 3 and build["family"] == FAMILY
    # nothing that reads the data set's own manifest can see it
    assert (data / "manifest.csv").read_bytes() == before
    assert all(r["generator"] != FAMILY for r in read_manifest(data))
    assert {c.row["generator"] for c in load_clips(data, "test")} == {"human"}

    report = first_look(data, None, bootstrap=20)
    assert report["n_synthetic"] == 3 and report["n_bona_fide"] == 3
    assert 0.0 <= report["eer"] <= 1.0 and report["model"]["version"]
    recorded = json.loads((manifest.parent / FIRST_LOOK).read_text())
    assert recorded["model"]["checksum"] == report["model"]["checksum"]
    assert recorded["sealed_manifest_sha256"] == build["manifest_sha256"]
    with pytest.raises(SystemExit, match="already broken"):
        first_look(data, None)
