"""The detector's acoustic front end: log linear-filterbank energies with mean normalisation.

Why linear bands and not mel: synthetic-speech artefacts (vocoder smearing, missing
high-band detail, overly regular harmonics) sit as much in the upper spectrum as in the
lower one, and LFCC-style linear resolution is the ASVspoof-proven choice for that.
Per-window mean normalisation along time removes any stationary channel colour (EQ,
tilt, level) so the model cannot learn the recording chain.

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

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "log_linear_filterbank_cmn", **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FrontEndConfig:
        fields = {k: v for k, v in raw.items() if k != "kind"}
        return cls(**fields)


class FrontEnd(torch.nn.Module):
    """(batch, samples) float32 -> (batch, n_bands, frames) mean-normalised log energies."""

    fbank: torch.Tensor

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            power=2.0,
            center=True,
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
        spec = self.spectrogram(samples)  # (B, F, T)
        bands = torch.matmul(spec.transpose(1, 2), self.fbank).transpose(1, 2)  # (B, n_bands, T)
        logs = torch.log(bands + self.config.log_floor)
        return logs - logs.mean(dim=2, keepdim=True)
