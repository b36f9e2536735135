"""The detector's acoustic front end: a linear-frequency log power spectrogram with mean normalisation.

The default keeps every FFT bin (31 Hz resolution), so harmonic fine structure and the smearing
of phase reconstruction stay visible; the LFCC-style pooled variant (`filterbank=True`) is kept
for comparison. Linear rather than mel frequency because synthetic-speech artefacts (vocoder
smearing, missing high-band detail, overly regular harmonics) sit as much in the upper spectrum
as in the lower one. Per-window mean normalisation along time removes any stationary channel
colour (EQ, tilt, level) so the model cannot learn the recording chain.

This module must never resample, read files or decide labels: it maps fixed windows at the
model rate to features and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchaudio


@dataclass(frozen=True)
class FrontEndConfig:
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_bands: int = 60
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-6
    #: False: keep every FFT bin (31 Hz resolution), so harmonic fine structure and phase-
    #: reconstruction smearing stay visible; True: pool into `n_bands` linear bands (LFCC-like)
    filterbank: bool = False
    #: add per-bin phase-advance deviation (cos, sin) channels, meant for magnitude-only
    #: resynthesis (Griffin-Lim); measured: no dev gain for 2.3x the parameters, so off
    phase: bool = False

    @property
    def n_features(self) -> int:
        mags = self.n_bands if self.filterbank else self.n_fft // 2 + 1
        return mags + (2 * (self.n_fft // 2 + 1) if self.phase else 0)

    def to_dict(self) -> dict[str, Any]:
        kind = "log_linear_filterbank_cmn" if self.filterbank else "log_linear_spectrogram_cmn"
        return {"kind": kind, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FrontEndConfig:
        fields = {k: v for k, v in raw.items() if k != "kind"}
        # manifests written before a field existed meant the behaviour of that time
        fields.setdefault("filterbank", raw.get("kind") == "log_linear_filterbank_cmn")
        fields.setdefault("phase", False)
        return cls(**fields)


class FrontEnd(torch.nn.Module):
    """(batch, samples) float32 -> (batch, n_features, frames) mean-normalised log energies."""

    fbank: torch.Tensor
    expected_advance: torch.Tensor

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            power=None,  # complex: magnitude and phase both come from it
            center=True,
        )
        bins = torch.arange(config.n_fft // 2 + 1, dtype=torch.float32)
        # phase a stationary sinusoid at each bin centre advances by per hop
        self.register_buffer(
            "expected_advance",
            (2 * torch.pi * bins * config.hop_length / config.n_fft).view(1, -1, 1),
            persistent=False,
        )
        fbank = torchaudio.functional.linear_fbanks(
            n_freqs=config.n_fft // 2 + 1,
            f_min=config.f_min,
            f_max=config.f_max,
            n_filter=config.n_bands,
            sample_rate=config.sample_rate,
        )
        # not persistent: rebuilt from the config, so the weights file holds only learnt values
        self.register_buffer("fbank", fbank, persistent=False)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        stft = self.spectrogram(samples)  # (B, F, T) complex
        power = stft.real**2 + stft.imag**2
        if self.config.filterbank:
            power_in = torch.matmul(power.transpose(1, 2), self.fbank).transpose(1, 2)  # (B, n_bands, T)
        else:
            power_in = power
        logs = torch.log(power_in + self.config.log_floor)
        feats = logs - logs.mean(dim=2, keepdim=True)
        if not self.config.phase:
            return feats
        phase = torch.angle(stft)
        advance = phase[:, :, 1:] - phase[:, :, :-1] - self.expected_advance
        advance = torch.nn.functional.pad(advance, (1, 0))
        return torch.cat([feats, torch.cos(advance), torch.sin(advance)], dim=1)
