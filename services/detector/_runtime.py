"""The detector at run time: windowing, batched scoring and the per-upload decision.

The worker codes against `Detector` with numpy arrays only, so torch stays inside
services/detector/. Scores are calibrated probabilities in [0, 1] (higher = more likely
synthetic): score = sigmoid(scale * logit + bias), with scale and bias fitted on the dev split.

Decision rule (services.detector._decision, documented in docs/model-card.md): audio with too
little speech (Silero VAD, services.detector._vad) is "inconclusive" with reason not_speech or
too_little_speech; otherwise the upload's score is the speech-weighted mean of its window scores,
"inconclusive" within `inconclusive_margin` of the EER threshold, else "synthetic" at or above
the threshold and "bona_fide" below it. The verdict also carries the per-window timeline and the
span most likely synthetic.

This module must never fetch audio, talk to a broker or pick a device other than the one it
was given; CUDA out-of-memory is translated once, here, into ResourceExhausted("cuda_oom").
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from services.errors import FatalError, ResourceExhausted, RetryableError

from ._artifact import WEIGHTS_FILE, ModelMeta, default_artifact_dir, read_manifest
from ._decision import Decision, SpeechPolicy, decide
from ._frontend import FrontEndConfig
from ._model import DetectorNet, NetConfig
from ._vad import SpeechDetector, load_speech_detector
from ._windows import cut_windows, resample

if TYPE_CHECKING:
    from ._onnx import OnnxNetwork

_threads_lock = threading.Lock()
_threads_configured = False


def configure_torch_threads(threads: int | None = None) -> int:
    """Cap torch's intra-op pool so the scorer leaves cores to the fetch threads beside it.

    Default: half the cores, at least 1, at most 4. Idempotent; the inter-op pool can only be
    set once per process, so a failure there is ignored.
    """
    global _threads_configured
    n = threads if threads is not None else max(1, min(4, (os.cpu_count() or 2) // 2))
    with _threads_lock:
        torch.set_num_threads(n)
        if not _threads_configured:
            # raises when already set or when parallel work already ran: harmless either way
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
            _threads_configured = True
    return n


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Detector:
    """A loaded, verified model. `windows` is thread-safe CPU work; `score_windows` runs the net."""

    def __init__(
        self,
        meta: ModelMeta,
        net: DetectorNet,
        device: str,
        vad: SpeechDetector | None = None,
        speech_policy: SpeechPolicy | None = None,
        onnx: OnnxNetwork | None = None,
    ) -> None:
        self.meta = meta
        self.device = device
        self.speech_policy = speech_policy or SpeechPolicy()
        self._net = net
        self._vad = vad
        #: "torch": the traced network; "onnx": the traced front end in torch, then the network
        #: in ONNX Runtime (services.detector._onnx)
        self.runtime = "onnx" if onnx is not None else "torch"
        self._onnx = onnx
        self._forward = _trace(net.frontend if onnx is not None else net, meta.window_samples, device)
        self._lock = threading.Lock()  # one forward pass at a time; batches are the parallelism

    def windows(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """1-D (or (n, channels)) float samples at any rate -> (n_windows, window_samples) float32
        at the model rate; fixed windows, the last one repeat-padded; always >= 1 window."""
        at_rate = resample(samples, sample_rate, self.meta.sample_rate)
        min_tail = int(round(self.meta.min_tail_seconds * self.meta.sample_rate))
        return cut_windows(at_rate, self.meta.window_samples, min_tail)

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Raw network outputs for (n, window_samples) windows (used by calibration and eval)."""
        arr = np.ascontiguousarray(windows, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.meta.window_samples:
            raise ValueError(f"expected (n, {self.meta.window_samples}) windows, got shape {arr.shape}")
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        try:
            with self._lock, torch.inference_mode():
                batch = torch.from_numpy(arr)
                if self.device.startswith("cuda"):
                    # page-locked host memory lets the copy run by DMA, asynchronously; the
                    # .cpu() below is the one synchronisation point
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                if self._onnx is not None:
                    out = self._onnx.run(self._forward(batch).float().cpu().numpy())
                else:
                    out = self._forward(batch).float().cpu().numpy()
        except Exception as exc:
            if _is_oom(exc):
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                raise ResourceExhausted(
                    "cuda_oom", f"out of accelerator memory scoring {arr.shape[0]} windows; split the batch"
                ) from exc
            raise RetryableError("scoring_failed", f"{type(exc).__name__}: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        z = self.meta.calibration_scale * np.asarray(logits, dtype=np.float64) + self.meta.calibration_bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, window_samples) float32 -> (n,) float32 scores in [0, 1]. Deterministic: eval mode,
        inference mode, no dropout, no randomness. Raises ResourceExhausted("cuda_oom") on CUDA OOM."""
        return self.calibrate(self.logits(windows))

    def speech(self, windows: np.ndarray) -> np.ndarray | None:
        """(n, window_samples) -> (n,) share of each window that is speech; None when this
        detector was loaded without a VAD. CPU work, safe from the worker's fetch threads."""
        if self._vad is None:
            return None
        return self._vad.speech_fraction(windows)

    def decide(
        self,
        window_scores: np.ndarray,
        speech: np.ndarray | None = None,
        duration_seconds: float | None = None,
    ) -> Decision:
        """The rule of the module docstring: speech check (when `speech` is given), then the
        speech-weighted mean against the EER threshold with an inconclusive band of
        +/- meta.inconclusive_margin, and the timeline of the windows."""
        return decide(
            window_scores,
            self.meta.threshold,
            self.meta.inconclusive_margin,
            speech,
            window_seconds=self.meta.window_seconds,
            duration_seconds=duration_seconds,
            policy=self.speech_policy,
        )

    def score_samples(self, samples: np.ndarray, sample_rate: int) -> Decision:
        """One clip, the worker's path: windows -> scores and speech -> decision."""
        windows = self.windows(samples, sample_rate)
        duration = len(samples) / float(sample_rate) if sample_rate > 0 else None
        return self.decide(self.score_windows(windows), self.speech(windows), duration)

    def memory_stats(self) -> dict[str, int] | None:
        """CUDA memory of this detector's device (allocated, reserved, total bytes); None on CPU.
        For the worker's metrics (consumers.instrumentation), which may not import torch."""
        if not self.device.startswith("cuda"):
            return None
        device = torch.device(self.device)
        return {
            "allocated": int(torch.cuda.memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device)),
            "total": int(torch.cuda.get_device_properties(device).total_memory),
        }


def _trace(net: torch.nn.Module, window_samples: int, device: str) -> Any:
    """The network as a TorchScript trace, which runs the same operations without Python between
    them: measured 1.06-1.23x faster per window on one CPU thread at every batch size from 1 to
    48 (interleaved with the eager module; docs/model-card.md, "Cost"), with equal outputs.
    Falls back to the eager module if tracing fails, so a model that cannot be traced still
    scores."""
    try:
        with torch.inference_mode():
            return torch.jit.trace(net, torch.zeros(1, window_samples, device=device))  # type: ignore[no-untyped-call]
    except Exception as exc:  # noqa: BLE001 - the eager module is always correct, only slower
        import logging

        logging.getLogger("audioguard.detector").warning(
            "TorchScript trace failed; scoring with the eager module", extra={"error": str(exc)}
        )
        return net


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FatalError("bad_config", f"device {device!r} requested but CUDA is not available")
    return device


def build_net(meta_frontend: dict[str, Any], meta_network: dict[str, Any]) -> DetectorNet:
    return DetectorNet(FrontEndConfig.from_dict(meta_frontend), NetConfig.from_dict(meta_network))


def load_detector(
    path: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    speech_check: bool = True,
    runtime: Literal["torch", "onnx"] = "torch",
    onnx_path: str | Path | None = None,
) -> Detector:
    """Load and verify an artifact directory (default: the shipped one), with the VAD of the
    speech check unless `speech_check` is False (calibration and evaluation score raw windows).

    Raises FatalError("model_checksum") when the weights' sha256 differs from the manifest,
    FatalError("model_missing" / "model_manifest") when the artifact is absent or malformed.
    device "auto" = cuda when available, else cpu. `threads` caps torch's CPU threads (and ONNX
    Runtime's). runtime "onnx" scores the network with ONNX Runtime from `onnx_path` (default
    `<artifact>/network.onnx`, written by `audioguard model export-onnx`), refused with
    FatalError("model_missing" / "model_checksum") when absent or exported from other weights.
    """
    directory = Path(path) if path is not None else default_artifact_dir()
    meta, _ = read_manifest(directory)
    n_threads = configure_torch_threads(threads)
    dev = resolve_device(device)
    net = build_net(meta.frontend, meta.network)
    try:
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # a verified file that does not fit the declared network
        raise FatalError("model_manifest", f"weights do not match the manifest's network: {exc}") from exc
    net.eval().to(dev)
    vad = load_speech_detector(meta.sample_rate) if speech_check else None
    onnx = None
    if runtime == "onnx":
        from ._artifact import ONNX_FILE
        from ._onnx import OnnxNetwork

        target = Path(onnx_path) if onnx_path is not None else directory / ONNX_FILE
        onnx = OnnxNetwork(target, meta.checksum, dev, n_threads)
    elif runtime != "torch":
        raise FatalError("bad_config", f"runtime {runtime!r}: expected 'torch' or 'onnx'")
    return Detector(meta, net, dev, vad, onnx=onnx)
