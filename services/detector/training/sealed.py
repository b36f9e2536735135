"""The sealed generator family: built now, looked at once, after the final artifact is chosen.

Issue 17 asks for one generator family that no recipe decision ever sees, so the shipped model's
generalisation gets one honest first look. The sealed family is **sinusoidal modelling** (Serra's
spectral modelling synthesis, after McAulay-Quatieri): per 16 ms frame the strongest spectral
peaks become sinusoids (frequency and amplitude from a parabola through the peak, phase carried
along from the nearest peak of the frame before), resynthesised by overlap-add, plus the residual
as noise shaped by its smoothed spectral envelope. It keeps none of the take's phase and uses no
pitch tracker, so it is a family of its own beside the training families (source-filter
vocoders with an F0 track, Griffin-Lim phase reconstruction, concatenative and parametric TTS).
Written here from the textbook description; no code copied.

The rule, fixed before any score exists:

- clips: copy-synthesis of the test split's bona fide takes (unseen speakers), read from their
  source files, trimmed, cut at the data build's 6 s, through a fresh draw of the data build's
  channel chain; seeded per take;
- the set lives in `<data>/sealed/` with its own manifest, so no command that reads
  `<data>/manifest.csv` (train, eval, lofo, gate) can see it;
- the first look (`audioguard data sealed --first-look --model DIR`) scores it by the runtime rule
  against the test split's bona fide clips and writes `first_look.json` with the artifact's
  checksum; a second look is refused: the seal is broken once, on the artifact chosen last.

This module must never train, and nothing but `first_look` may score the sealed clips.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy import ndimage, signal

from .channel import RATE, apply_chain, draw_chain, read_mono, trim_silence

FAMILY = "sms-vocoder"
SEALED_DIR = "sealed"
FIRST_LOOK = "first_look.json"
_N_FFT = 1024
_HOP = 256


def sms_vocode(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sinusoids + shaped noise resynthesis of 16 kHz mono `x` (same length, same RMS)."""
    x = np.asarray(x, dtype=np.float64)
    peaks = int(rng.integers(25, 80))  # how many partials a frame keeps
    floor_db = float(rng.uniform(50.0, 70.0))  # peaks below the frame's maximum by more are dropped
    noise_gain = float(rng.uniform(0.5, 1.0))
    window = np.hanning(_N_FFT)
    padded = np.pad(x, (_N_FFT // 2, _N_FFT))
    sines = np.zeros(padded.size)
    norm = np.zeros(padded.size)
    t = np.arange(_N_FFT) / RATE
    prev_f = np.zeros(0)
    prev_ph = np.zeros(0)
    for start in range(0, x.size + _N_FFT // 2, _HOP):
        seg = padded[start : start + _N_FFT]
        if seg.size < _N_FFT:
            break
        mag = np.abs(np.fft.rfft(seg * window, n=2 * _N_FFT))  # zero-padded: finer peak bins
        db = 20 * np.log10(mag + 1e-12)
        # a peak is the maximum of its +/-5 bins (the zero-padded Hann main lobe is +/-4 wide), so a
        # strong partial's side lobes do not become partials of their own
        is_peak = (db == ndimage.maximum_filter1d(db, 11)) & (db > db.max() - floor_db)
        is_peak[[0, -1]] = False
        idx = np.flatnonzero(is_peak)
        idx = idx[np.argsort(mag[idx])[::-1][:peaks]]
        a, b, c = db[idx - 1], db[idx], db[idx + 1]
        offset = 0.5 * (a - c) / np.where(np.abs(a - 2 * b + c) > 1e-9, a - 2 * b + c, 1e-9)
        freq = (idx + offset) * RATE / (2 * _N_FFT)
        amp = 10 ** ((b - 0.25 * (a - c) * offset) / 20) * 2 / window.sum()
        phase = rng.uniform(0, 2 * np.pi, freq.size)
        if prev_f.size and freq.size:
            nearest = np.abs(freq[:, None] - prev_f[None, :]).argmin(axis=1)
            close = np.abs(freq - prev_f[nearest]) < 25.0
            advanced = prev_ph[nearest] + 2 * np.pi * prev_f[nearest] * _HOP / RATE
            phase = np.where(close, advanced, phase)
        frame = (amp[:, None] * np.cos(2 * np.pi * freq[:, None] * t[None, :] + phase[:, None])).sum(axis=0)
        sines[start : start + _N_FFT] += frame * window
        norm[start : start + _N_FFT] += window**2
        prev_f, prev_ph = freq, phase
    sines = (sines / np.maximum(norm, 1e-3))[_N_FFT // 2 : _N_FFT // 2 + x.size]
    stft = dict(fs=RATE, window="hann", nperseg=512, noverlap=384)
    # the residual in magnitude: the sinusoids carry phases of their own, so subtracting waveforms
    # would leave the whole take in the "residual"
    _, _, original = signal.stft(x, **stft)
    _, _, partials = signal.stft(sines, **stft)
    residual = np.maximum(np.abs(original) - np.abs(partials), 0.0)
    envelope = signal.convolve2d(residual, np.ones((9, 1)) / 9, mode="same")
    _, _, white = signal.stft(rng.standard_normal(x.size), **stft)
    _, noise = signal.istft(white / np.maximum(np.abs(white), 1e-12) * envelope, **stft)
    y = sines + noise_gain * np.asarray(noise)[: x.size]
    y = y * np.sqrt((x**2).mean() / max(float((y**2).mean()), 1e-12))
    out: np.ndarray = np.clip(y, -1.0, 1.0).astype(np.float32)
    return out


def build_sealed(data: Path, *, seed: int = 4242, limit: int | None = None) -> Path:
    """Write `<data>/sealed/` (FLAC clips, manifest.csv, build.json); returns its manifest."""
    from .data import MAX_SECONDS, MIN_SECONDS, P_GSM, P_NARROWBAND, read_manifest, write_manifest

    takes = [
        r
        for r in read_manifest(data)
        if r["split"] == "test" and r["label"] == "bona_fide" and r["source_file"]
    ]
    takes = takes[:limit] if limit is not None else takes
    out = data / SEALED_DIR
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    started = time.monotonic()
    for row in takes:
        ident = hashlib.sha1(f"sealed/{row['path']}".encode()).hexdigest()
        rng = np.random.default_rng([seed, int(ident[:12], 16)])
        take, source_rate = read_mono(Path(row["source_file"]))
        take = trim_silence(take)[: int(MAX_SECONDS * RATE)]
        if take.size < MIN_SECONDS * RATE:
            continue
        chain = draw_chain(rng, P_NARROWBAND, P_GSM)
        # a take recorded at 8 kHz already has its band limit and codec (the data build's rule)
        treated = apply_chain(sms_vocode(take, rng), chain, rng, already_narrowband=source_rate <= 8000)
        rel = Path("clips") / f"{ident[:16]}.flac"
        sf.write(out / rel, treated, RATE, subtype="PCM_16")
        rows.append(
            {
                "path": str(rel),
                "split": "sealed",
                "label": "synthetic",
                "generator": FAMILY,
                "voice": "sms",
                "speaker": f"{FAMILY}:{row['speaker']}",
                "language": row["language"],
                "source_package": row["source_package"],
                "source_version": f"{row['source_version']} + audioguard sealed.sms_vocode",
                "licence": row["licence"],
                "sha256": hashlib.sha256((out / rel).read_bytes()).hexdigest(),
                "duration": f"{treated.size / RATE:.3f}",
                "channel": chain.describe(),
                "source_file": row["source_file"],
            }
        )
    manifest = out / "manifest.csv"
    write_manifest(manifest, sorted(rows, key=lambda r: r["path"]))
    (out / "build.json").write_text(
        json.dumps(
            {
                "family": FAMILY,
                "seed": seed,
                "clips": len(rows),
                "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "seconds": round(time.monotonic() - started, 1),
                "rule": "scored once, by `audioguard data sealed --first-look`, on the final artifact",
            },
            indent=2,
        )
        + "\n"
    )
    return manifest


def first_look(data: Path, model: Path | None, *, bootstrap: int = 300, threads: int = 2) -> dict[str, Any]:
    """Score the sealed set once against the test split's bona fide clips; refuse a second look."""
    from .._runtime import load_detector
    from .eval import eer_metrics, score_clips
    from .train import load_clips

    sealed = data / SEALED_DIR
    record = sealed / FIRST_LOOK
    if record.exists():
        raise SystemExit(f"the seal is already broken: {record} holds the first look; there is no second")
    if not (sealed / "manifest.csv").exists():
        raise SystemExit(f"no sealed set in {sealed}: run `audioguard data sealed --data {data}` first")
    det = load_detector(model, device="cpu", threads=threads, speech_check=False)
    bona = [c.audio for c in load_clips(data, "test") if c.label == 0]
    synthetic = [c.audio for c in load_clips(sealed, "sealed")]
    report = {
        "family": FAMILY,
        "model": {"name": det.meta.name, "version": det.meta.version, "checksum": det.meta.checksum},
        "looked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sealed_manifest_sha256": hashlib.sha256((sealed / "manifest.csv").read_bytes()).hexdigest(),
        **eer_metrics(score_clips(det, bona), score_clips(det, synthetic), bootstrap),
    }
    record.write_text(json.dumps(report, indent=2) + "\n")
    return report


__all__ = ["FAMILY", "build_sealed", "first_look", "sms_vocode"]
