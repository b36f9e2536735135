"""Equal-weight fusion of two detector artifacts: the mean of their calibrated clip scores (each
artifact's own Platt scaling, no weight fitted), beside each alone, EER per generator on dev and
on test. Prints numbers; asserts nothing.

    .venv/bin/python scripts/score_fusion.py DATA ARTIFACT_A ARTIFACT_B

The rule it was run under (docs/model-card.md, "The 4.0.0 candidate"): the fusion is worth
building into the runtime only if its dev EER is below ARTIFACT_A's by at least 0.5 points;
test is printed after dev and decides nothing.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from services.detector._runtime import load_detector
from services.detector.training.metrics import eer
from services.detector.training.train import load_clips


def _eer_by_generator(scores: np.ndarray, labels: np.ndarray, generators: np.ndarray) -> dict[str, float]:
    bona = scores[labels == 0]
    table = {"pooled": eer(bona, scores[labels == 1])[0]}
    for gen in sorted(set(generators[labels == 1])):
        table[gen] = eer(bona, scores[(labels == 1) & (generators == gen)])[0]
    return table


def main(data: Path, artifacts: list[Path]) -> None:
    torch.set_num_threads(2)
    detectors = [load_detector(a, device="cpu", threads=2, speech_check=False) for a in artifacts]
    for split in ("dev", "test"):
        clips = load_clips(data, split)
        labels = np.array([c.label for c in clips])
        generators = np.array([c.row["generator"] for c in clips])
        # the runtime's own path: its windows, its traced network, its calibration, mean per clip
        scores = [
            np.array([float(d.calibrate(d.logits(d.windows(c.audio, 16000))).mean()) for c in clips])
            for d in detectors
        ]
        rows = {f"{d.meta.name}@{d.meta.version}": s for d, s in zip(detectors, scores, strict=True)}
        rows["fused (mean)"] = np.mean(scores, axis=0)
        for name, s in rows.items():
            table = {k: round(100 * v, 1) for k, v in _eer_by_generator(s, labels, generators).items()}
            print(f"{split} {name}: EER % {json.dumps(table)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(sys.argv[2]), Path(sys.argv[3])])
