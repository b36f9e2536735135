"""The detector network: a small residual 1-D CNN over front-end frames with statistics pooling.

Sized for CPU: about 0.36 M parameters and about 0.15 GFLOPs per 4 s window, so it trains on
two cores in minutes and scores a window in milliseconds. The output is one logit per
window (higher = more likely synthetic); calibration to [0, 1] happens in the runtime.

This module must never read files, resample or pick thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ._frontend import FrontEnd, FrontEndConfig


@dataclass(frozen=True)
class NetConfig:
    channels: int = 96
    blocks: int = 4
    hidden: int = 64
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NetConfig:
        return cls(**raw)


class _Block(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm1d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(x + self.body(x))
        return out


class DetectorNet(nn.Module):
    """Raw windows (B, samples) -> logits (B,)."""

    def __init__(self, frontend: FrontEndConfig, config: NetConfig) -> None:
        super().__init__()
        self.frontend = FrontEnd(frontend)
        c = config.channels
        # stride 2 halves the frame rate early: most of the cost saving, little accuracy lost
        self.stem = nn.Sequential(
            nn.Conv1d(frontend.n_features, c, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm1d(c),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*[_Block(c, 2 ** (i % 3)) for i in range(config.blocks)])
        self.head = nn.Sequential(
            nn.Linear(2 * c, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(feats))
        return torch.cat([h.mean(dim=2), h.std(dim=2)], dim=1)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Front-end features (B, n_features, frames) -> logits (B,); training augments the
        features between the front end and this."""
        logits: torch.Tensor = self.head(self.embed(feats))
        return logits.squeeze(1)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.classify(self.frontend(samples))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_flops(frontend: FrontEndConfig, config: NetConfig, window_samples: int) -> int:
    """Multiply-adds x2 of the convolutions and linear layers for one window (front end excluded:
    one FFT per frame is small next to the convolutions)."""
    frames = window_samples // frontend.hop_length + 1
    t = (frames + 1) // 2
    c = config.channels
    flops = 2 * frontend.n_features * c * 5 * t
    flops += config.blocks * 2 * (2 * c * c * 3 * t)
    flops += 2 * (2 * c * config.hidden + config.hidden)
    return flops
