"""Channel treatment for the data build: the same random recording chain for both classes.

A chain is drawn from a seeded generator *without looking at the label* (only the
narrowband and GSM probabilities are balanced per split so that natively narrowband bona
fide sources do not make "telephone band" a label shortcut). Steps, in order: silence trim,
optional 8 kHz band-limit round trip (optionally GSM 06.10 coded through sox) or G.722
round trip, random spectral tilt and one peaking EQ, additive white/pink noise at 20-50 dB
SNR, random level, then optional MP3 or Opus transcoding (what an upload goes through last).

This module must never choose labels, splits or files; it transforms 16 kHz mono arrays.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

RATE = 16000


@dataclass(frozen=True)
class Chain:
    band: str  # "none" | "narrowband" | "narrowband_gsm" | "g722"
    g722_rate: int
    tilt_db_per_octave: float
    eq_freq: float
    eq_gain_db: float
    noise: str  # "none" | "white" | "pink"
    snr_db: float
    level_dbfs: float
    codec: str  # "none" | "mp3" | "opus"
    codec_quality: float

    def describe(self) -> str:
        parts = [self.band if self.band != "g722" else f"g722@{self.g722_rate // 1000}k"]
        parts.append(
            f"tilt{self.tilt_db_per_octave:+.1f}dB/oct eq{self.eq_gain_db:+.1f}dB@{self.eq_freq:.0f}Hz"
        )
        parts.append("clean" if self.noise == "none" else f"{self.noise}{self.snr_db:.0f}dB")
        parts.append(f"level{self.level_dbfs:.0f}dBFS")
        parts.append(self.codec if self.codec == "none" else f"{self.codec}q{self.codec_quality:.2f}")
        return " ".join(parts)


def draw_chain(rng: np.random.Generator, p_narrowband: float, p_gsm: float) -> Chain:
    """Draw a chain; `p_narrowband` / `p_gsm` (share of narrowband clips that are GSM coded) are the
    only per-class inputs and exist to equalise natively narrowband sources across classes."""
    u = rng.random()
    if u < p_narrowband:
        band = "narrowband_gsm" if rng.random() < p_gsm else "narrowband"
    elif u < p_narrowband + 0.2:
        band = "g722"
    else:
        band = "none"
    codec_u = rng.random()
    codec = "mp3" if codec_u < 0.3 else "opus" if codec_u < 0.6 else "none"
    noise_u = rng.random()
    return Chain(
        band=band,
        g722_rate=int(rng.choice([48000, 56000, 64000])),
        tilt_db_per_octave=float(rng.uniform(-3.0, 3.0)),
        eq_freq=float(np.exp(rng.uniform(np.log(200.0), np.log(5000.0)))),
        eq_gain_db=float(rng.uniform(-6.0, 6.0)),
        noise="none" if noise_u < 0.25 else "white" if noise_u < 0.6 else "pink",
        snr_db=float(rng.uniform(20.0, 50.0)),
        level_dbfs=float(rng.uniform(-38.0, -14.0)),
        codec=codec,
        codec_quality=float(rng.uniform(0.2, 0.9)),
    )


def trim_silence(x: np.ndarray, rate: int = RATE, floor_db: float = 40.0) -> np.ndarray:
    """Cut leading/trailing frames quieter than `floor_db` below the loudest 20 ms frame."""
    frame = max(1, rate // 50)
    n = x.size // frame
    if n < 3:
        return x
    energy = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12
    db = 10 * np.log10(energy)
    active = np.nonzero(db > db.max() - floor_db)[0]
    if active.size == 0:
        return x
    margin = 2  # 40 ms kept either side so onsets are not clipped
    start = max(0, active[0] - margin) * frame
    stop = min(n, active[-1] + 1 + margin) * frame
    return x[start:stop]


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(x, np.float32)), src, dst)
    return np.asarray(out.numpy(), dtype=np.float32)


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """An audio file as 16 kHz mono float32 (channels averaged), and the rate it was recorded at."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32)
    return (mono if rate == RATE else _resample(mono, rate, RATE)), int(rate)


def _gsm_round_trip(x8k: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.wav"
        gsm = Path(tmp) / "x.gsm"
        back = Path(tmp) / "out.wav"
        sf.write(src, np.clip(x8k, -1, 1), 8000, subtype="PCM_16")
        subprocess.run(["sox", "-q", str(src), "-r", "8000", "-c", "1", str(gsm)], check=True)
        subprocess.run(["sox", "-q", str(gsm), "-b", "16", str(back)], check=True)
        y, _ = sf.read(back, dtype="float32")
    return np.asarray(y, dtype=np.float32)


def _g722_round_trip(x: np.ndarray, bitrate: int) -> np.ndarray:
    import G722  # data extra only

    codec = G722.G722(RATE, bitrate)
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    coded = codec.encode(pcm)
    decoder = G722.G722(RATE, bitrate)
    y = np.asarray(decoder.decode(coded), dtype=np.float32) / 32768.0
    return y[: x.size]


def _tilt_eq(x: np.ndarray, tilt: float, f0: float, gain_db: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1.0 / RATE)
    g_db = tilt * np.log2((f + 100.0) / 1000.0)
    g_db += gain_db * np.exp(-0.5 * (np.log2((f + 1.0) / f0) / 0.5) ** 2)  # half-octave bell
    return np.fft.irfft(spec * 10 ** (g_db / 20.0), n=x.size).astype(np.float32)


def _noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white.astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / np.sqrt(f), n=n).astype(np.float32)


def _transcode(x: np.ndarray, codec: str, quality: float) -> np.ndarray:
    buf = io.BytesIO()
    if codec == "mp3":
        sf.write(buf, x, RATE, format="MP3", subtype="MPEG_LAYER_III", compression_level=quality)
    else:
        sf.write(buf, x, RATE, format="OGG", subtype="OPUS", compression_level=quality)
    buf.seek(0)
    y, rate = sf.read(buf, dtype="float32")
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=1)
    if rate != RATE:
        y = _resample(y, rate, RATE)
    return np.asarray(y, dtype=np.float32)


def apply_chain(
    x: np.ndarray, chain: Chain, rng: np.random.Generator, already_narrowband: bool
) -> np.ndarray:
    """16 kHz mono float32 in, treated 16 kHz mono float32 out. `already_narrowband`: the source was
    recorded at 8 kHz (its band limit and any codec are already real, so they are not simulated twice)."""
    y = trim_silence(np.asarray(x, dtype=np.float32))
    if chain.band.startswith("narrowband") and not already_narrowband:
        nb = _resample(y, RATE, 8000)
        if chain.band == "narrowband_gsm":
            nb = _gsm_round_trip(nb)
        y = _resample(nb, 8000, RATE)
    elif chain.band == "g722":
        y = _g722_round_trip(y, chain.g722_rate)
    y = _tilt_eq(y, chain.tilt_db_per_octave, chain.eq_freq, chain.eq_gain_db)
    if chain.noise != "none":
        power = float(np.mean(y**2)) + 1e-12
        noise = _noise(rng, y.size, chain.noise)
        noise *= np.sqrt(power / (float(np.mean(noise**2)) + 1e-12) / 10 ** (chain.snr_db / 10.0))
        y = y + noise
    rms = float(np.sqrt(np.mean(y**2))) + 1e-9
    y = y * (10 ** (chain.level_dbfs / 20.0) / rms)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > 0.98:
        y = y * (0.98 / peak)
    if chain.codec != "none":
        y = _transcode(y, chain.codec, chain.codec_quality)
    return np.asarray(y, dtype=np.float32)
