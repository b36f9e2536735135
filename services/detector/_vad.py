"""Voice activity: how much of each detector window is speech (Silero VAD, MIT).

The weights ship inside the `silero-vad` wheel (`silero_vad/data/silero_vad.jit`); they are found
through the installed distribution's file list and loaded with torch.jit, without importing the
`silero_vad` package, whose import sets torch's global thread count to 1 (it would undo
`configure_torch_threads` for the detector beside it). The file's sha256 is checked: a wheel
with other weights is a different VAD, and the speech thresholds below were set on this one.

The wrapper's hidden state is never used (each call starts from zero state), so one loaded VAD
is safe to share between the worker's fetch threads. Frames are 512 samples (32 ms at 16 kHz),
each fed with the previous frame's last 64 samples as context, exactly as the wrapper does; all
the frames of all the windows of one upload run as one batch (see SpeechDetector).

This module must never download anything, touch the GPU or decide a verdict: it returns, per
window, the share of 32 ms frames whose speech probability is at least `frame_threshold`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.errors import FatalError

__all__ = ["SILERO_SHA256", "SpeechDetector", "load_speech_detector"]

#: sha256 of silero_vad/data/silero_vad.jit in silero-vad 6.2.3
SILERO_SHA256 = "e1122837f4154c511485fe0b9c64455f7b929c96fbb8d79fbdb336383ebd3720"
SAMPLE_RATE = 16000
FRAME = 512
CONTEXT = 64


def _weights_path() -> Path:
    try:
        dist = importlib.metadata.distribution("silero-vad")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FatalError(
            "vad_missing", "the silero-vad package is not installed (pip install silero-vad)"
        ) from exc
    path = Path(str(dist.locate_file("silero_vad/data/silero_vad.jit")))
    if not path.is_file():
        raise FatalError("vad_missing", f"silero-vad is installed but its weights are absent: {path}")
    return path


class SpeechDetector:
    """Per-window speech fraction of (n, samples) float32 windows at 16 kHz."""

    def __init__(self, core: Any, frame_threshold: float = 0.5) -> None:
        self._core = core
        self.frame_threshold = frame_threshold
        # The core is STFT -> conv encoder -> LSTM cell -> 1x1 conv head. Only the LSTM carries
        # state from frame to frame, so the STFT and encoder run on every frame of every window
        # in one batch, and the LSTM cell's weights drive one nn.LSTM over the frame sequence:
        # the same numbers as 125 calls of the core per 4 s window (max difference 2e-7 on the
        # test clips), measured 4-35x faster (docs/model-card.md, "Speech check").
        rnn = core.decoder.rnn
        self._lstm = torch.nn.LSTM(rnn.weight_ih.shape[1], rnn.weight_hh.shape[1], batch_first=True)
        self._lstm.load_state_dict(
            {
                "weight_ih_l0": rnn.weight_ih.detach(),
                "weight_hh_l0": rnn.weight_hh.detach(),
                "bias_ih_l0": rnn.bias_ih.detach(),
                "bias_hh_l0": rnn.bias_hh.detach(),
            }
        )
        self._lstm.eval()

    def frame_probabilities(self, windows: np.ndarray) -> np.ndarray:
        """(n, samples) -> (n, frames) speech probabilities; a partial last frame is zero-padded."""
        arr = np.ascontiguousarray(windows, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"expected (n, samples) windows, got shape {arr.shape}")
        n, length = arr.shape
        frames = max(1, -(-length // FRAME))
        if n == 0:
            return np.zeros((0, frames), dtype=np.float32)
        padded = np.zeros((n, frames * FRAME), dtype=np.float32)
        padded[:, :length] = arr
        x = torch.from_numpy(np.clip(padded, -1.0, 1.0)).reshape(n, frames, FRAME)
        # each frame is fed with the previous frame's last CONTEXT samples (zeros before the first)
        context = torch.cat([torch.zeros(n, 1, CONTEXT), x[:, :-1, -CONTEXT:]], dim=1)
        chunks = torch.cat([context, x], dim=2).reshape(n * frames, CONTEXT + FRAME)
        with torch.inference_mode():
            features = self._core.encoder(self._core.run_extractors(chunks))
            hidden, _ = self._lstm(features.reshape(n, frames, -1))
            head = self._core.decoder.decoder(hidden.reshape(n * frames, -1, 1))
            probs_t = head.reshape(n * frames, -1).mean(dim=1).reshape(n, frames)
        probs: np.ndarray = probs_t.numpy().astype(np.float32, copy=False)
        return probs

    def speech_fraction(self, windows: np.ndarray) -> np.ndarray:
        """(n, samples) -> (n,) share of each window's 32 ms frames that are speech, in [0, 1]."""
        probs = self.frame_probabilities(windows)
        if probs.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        fractions: np.ndarray = (probs >= self.frame_threshold).mean(axis=1).astype(np.float32)
        return fractions


def load_speech_detector(sample_rate: int, frame_threshold: float = 0.5) -> SpeechDetector:
    """The shipped Silero VAD, checked by sha256. Raises FatalError("vad_missing" /
    "vad_checksum" / "bad_config") when it is absent, altered, or the model rate is not 16 kHz."""
    if sample_rate != SAMPLE_RATE:
        raise FatalError(
            "bad_config", f"the speech check runs at {SAMPLE_RATE} Hz, the model at {sample_rate}"
        )
    path = _weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SILERO_SHA256:
        raise FatalError("vad_checksum", f"{path} has sha256 {digest}, expected {SILERO_SHA256}")
    wrapper = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    return SpeechDetector(wrapper._model, frame_threshold)
