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
    #: add two per-frame excitation channels: log crest factor and log kurtosis of the order-16
    #: LPC residual. Glottal pulses make human voiced residuals peaky; magnitude-only resynthesis
    #: (Griffin-Lim) matches the spectrogram but smears the pulses (dev: crest alone, EER ~15 %)
    residual: bool = True
    lpc_order: int = 16

    @property
    def n_features(self) -> int:
        mags = self.n_bands if self.filterbank else self.n_fft // 2 + 1
        return mags + (2 * (self.n_fft // 2 + 1) if self.phase else 0) + (2 if self.residual else 0)

    def to_dict(self) -> dict[str, Any]:
        kind = "log_linear_filterbank_cmn" if self.filterbank else "log_linear_spectrogram_cmn"
        return {"kind": kind, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FrontEndConfig:
        fields = {k: v for k, v in raw.items() if k != "kind"}
        # manifests written before a field existed meant the behaviour of that time
        fields.setdefault("filterbank", raw.get("kind") == "log_linear_filterbank_cmn")
        fields.setdefault("phase", False)
        fields.setdefault("residual", False)
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
        parts = [logs - logs.mean(dim=2, keepdim=True)]
        if self.config.phase:
            phase = torch.angle(stft)
            advance = phase[:, :, 1:] - phase[:, :, :-1] - self.expected_advance
            advance = torch.nn.functional.pad(advance, (1, 0))
            parts += [torch.cos(advance), torch.sin(advance)]
        if self.config.residual:
            parts.append(self.excitation(samples, parts[0].shape[2]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def excitation(self, samples: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, samples) -> (B, 2, frames): log crest factor and log kurtosis of each frame's LPC
        residual (autocorrelation method, Levinson-Durbin), centred and scaled to about unit range."""
        cfg = self.config
        pad = cfg.n_fft // 2  # same centring as the spectrogram, so frame t lines up
        x = torch.nn.functional.pad(samples, (pad, pad))
        fr = x.unfold(1, cfg.win_length, cfg.hop_length)[:, :frames]  # (B, T, W)
        fr = fr * torch.hann_window(cfg.win_length, device=fr.device, dtype=fr.dtype)
        p = cfg.lpc_order
        w = cfg.win_length
        r = torch.stack([(fr[..., k:] * fr[..., : w - k]).sum(-1) for k in range(p + 1)], dim=-1)
        r0 = r[..., 0] * (1 + 1e-6) + 1e-9  # white-noise correction keeps the recursion stable
        a = [torch.ones_like(r0)] + [torch.zeros_like(r0) for _ in range(p)]
        err = r0
        for i in range(1, p + 1):
            acc = r[..., i] + sum(a[j] * r[..., i - j] for j in range(1, i))
            k = (-acc / err).clamp(-0.9999, 0.9999)
            a = [a[0]] + [a[j] + k * a[i - j] for j in range(1, i)] + [k] + a[i + 1 :]
            err = err * (1 - k * k).clamp_min(1e-6)
        res = fr[..., p:]
        for j in range(1, p + 1):
            res = res + a[j].unsqueeze(-1) * fr[..., p - j : w - j]
        core = res[..., w // 8 : -(w // 8)]  # the Hann taper makes the frame edges meaningless
        ms = core.pow(2).mean(-1) + 1e-12
        # both are >= 1 for any signal; the clamp only catches silent (all-zero) frames
        crest = (core.abs().amax(-1) / ms.sqrt()).clamp(1.0, 1e3)
        kurt = (core.pow(4).mean(-1) / ms.pow(2)).clamp(1.0, 1e6)
        out = torch.stack([(torch.log(crest) - 1.4) * 3.0, (torch.log(kurt) - 1.5) * 1.5], dim=1)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).detach()
