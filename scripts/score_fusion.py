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

from services.detector import load_detector
from services.detector.training.eval import breakdown, score_clips, seen_generators
from services.detector.training.train import load_clips


def main(data: Path, artifacts: list[Path]) -> None:
    detectors = [load_detector(a, device="cpu", threads=2, speech_check=False) for a in artifacts]
    seen = seen_generators(data)
    for split in ("dev", "test"):
        clips = load_clips(data, split)
        # the runtime rule (eval.score_clips): its windows, traced network, calibration, mean per clip
        scores = [score_clips(d, [c.audio for c in clips]) for d in detectors]
        rows = {f"{d.meta.name}@{d.meta.version}": s for d, s in zip(detectors, scores, strict=True)}
        rows["fused (mean)"] = np.mean(scores, axis=0)
        for name, s in rows.items():
            # no bootstrap: the rule reads point EERs, and eval's report has the intervals
            groups = breakdown(s, clips, seen, n_boot=0)
            table = {k: round(100 * v["eer"], 1) for k, v in groups.items()}
            print(f"{split} {name}: EER % {json.dumps(table)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(sys.argv[2]), Path(sys.argv[3])])
