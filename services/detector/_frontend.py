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
    acf_basis: torch.Tensor

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
        # the first p+1 lags of the inverse FFT of a frame's power (its autocorrelation) as one
        # matrix product: the inverse FFT computed all n_fft lags into a (B, T, n_fft) tensor
        # for the p+1 used; same values
        bins = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64)
        lags = torch.arange(config.lpc_order + 1, dtype=torch.float64)
        weight = torch.full_like(bins, 2.0)
        weight[0] = weight[-1] = 1.0  # DC and Nyquist appear once in the full spectrum
        basis = weight[:, None] * torch.cos(2 * torch.pi * bins[:, None] * lags[None, :] / config.n_fft)
        # float64: the Levinson recursion amplifies rounding in these lags (a float32 product,
        # 3e-6 of r0 off the inverse FFT's values, moved the 3.0.0 test EER from 18.1 % to 22.6 %)
        self.register_buffer("acf_basis", basis / config.n_fft, persistent=False)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        stft = self.spectrogram(samples)  # (B, F, T) complex
        power = stft.real.square() + stft.imag.square()
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
            parts.append(self.excitation(stft, power))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def excitation(self, stft: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
        """STFT (B, F, T) and its power -> (B, 2, T): log crest factor and log kurtosis of each
        frame's order-p LPC residual, centred and scaled to about unit range.

        Everything comes from the spectrogram already computed: the frame's autocorrelation is
        the inverse FFT of its power (exact for lags below n_fft - win_length; only its first p+1
        lags, as a product with `acf_basis`), and the residual is the inverse FFT of the frame's
        spectrum times the prediction filter's, so no frame is cut out of the waveform twice."""
        cfg = self.config
        p, w, n = cfg.lpc_order, cfg.win_length, cfg.n_fft
        r = torch.matmul(power.transpose(1, 2).double(), self.acf_basis).float()  # (B, T, p+1)
        a = _levinson(r, p)  # (B, T, p+1), a[..., 0] == 1
        res = torch.fft.irfft(stft.transpose(1, 2) * torch.fft.rfft(a, n=n), n=n)  # (B, T, n)
        # the window sits at [(n - w) / 2, (n + w) / 2) of each frame; keep the samples predicted
        # from frame samples only, without the Hann taper's edges (meaningless there)
        left = (n - w) // 2
        core = res[..., left + p + w // 8 : left + w - w // 8]
        ms = core.square().mean(-1) + 1e-12
        # both are >= 1 for any signal; the clamp only catches silent (all-zero) frames
        crest = (core.abs().amax(-1) / ms.sqrt()).clamp(1.0, 1e3)
        kurt = (core.square().square().mean(-1) / ms.square()).clamp(1.0, 1e6)
        out = torch.stack([(torch.log(crest) - 1.4) * 3.0, (torch.log(kurt) - 1.5) * 1.5], dim=1)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).detach()


def _levinson(r: torch.Tensor, p: int) -> torch.Tensor:
    """Autocorrelations (..., p+1) -> prediction-error filters (..., p+1) by Levinson-Durbin."""
    r0 = r[..., 0] * (1 + 1e-6) + 1e-9  # white-noise correction keeps the recursion stable
    a = torch.zeros_like(r)
    a[..., 0] = 1.0
    err = r0
    for i in range(1, p + 1):
        acc = r[..., i] + (a[..., 1:i] * r[..., 1:i].flip(-1)).sum(-1)
        k = (-acc / err).clamp(-0.9999, 0.9999)
        a[..., 1:i] = a[..., 1:i] + k.unsqueeze(-1) * a[..., 1:i].flip(-1)
        a[..., i] = k
        err = err * (1 - k * k).clamp_min(1e-6)
    return a
