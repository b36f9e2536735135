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
    #: one-class head (OC-softmax, Zhang et al., 2021): the logit is -alpha * cos(embedding, a
    #: learnt bona fide direction), trained to keep bona fide within a narrow angle of it and
    #: synthetic speech outside a wide one, instead of a boundary fitted to the generators seen;
    #: the published motivation is generators that training never saw
    one_class: bool = False
    oc_alpha: float = 20.0

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
        self.config = config
        self.head = nn.Sequential(
            nn.Linear(2 * c, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            # one-class: the last layer is an embedding, compared with `centre` by angle
            nn.Linear(config.hidden, config.hidden if config.one_class else 1),
        )
        if config.one_class:
            self.centre = nn.Parameter(torch.randn(config.hidden))

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(feats))
        return torch.cat([h.mean(dim=2), h.std(dim=2)], dim=1)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Front-end features (B, n_features, frames) -> logits (B,); training augments the
        features between the front end and this."""
        out: torch.Tensor = self.head(self.embed(feats))
        if self.config.one_class:
            cos = nn.functional.normalize(out, dim=1) @ nn.functional.normalize(self.centre, dim=0)
            return -self.config.oc_alpha * cos
        return out.squeeze(1)

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
