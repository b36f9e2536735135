"""Agreement of the ONNX Runtime scorer (fp32 and reduced-precision variants) with torch on the
detector's test split: max |score difference| per window and per clip, label agreement (the
worker's decision, speech check included, the same speech shares for every runtime) and the
pooled EER of each (whole clips, mean of window scores: the model card's rule). Prints numbers;
asserts nothing.

    .venv/bin/python scripts/onnx_agreement.py DATA VARIANT_DIR...

DATA is a data build (its manifest.csv's `test` rows are read, nothing else); each VARIANT_DIR
is an artifact folder with a network.onnx (`audioguard model export-onnx [--quantize ...] --out`).
"""

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.detector import default_artifact_dir, load_detector  # noqa: E402 - after the path set-up
from services.detector.training.gate import _read  # noqa: E402
from services.detector.training.metrics import bootstrap_ci, eer  # noqa: E402

data = Path(sys.argv[1])
variants = [Path(p) for p in sys.argv[2:]]
with (data / "manifest.csv").open(newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
torch_det = load_detector(default_artifact_dir(), device="cpu", threads=2)
dets = {"torch": torch_det}
for v in variants:
    precision = json.loads((v / "network.onnx.json").read_text()).get("precision", "fp32")
    dets[f"onnx-{precision}"] = load_detector(v, device="cpu", threads=2, speech_check=False, runtime="onnx")
clip_scores: dict[str, list[float]] = {k: [] for k in dets}
labels: dict[str, list[str]] = {k: [] for k in dets}
worst_window = dict.fromkeys(dets, 0.0)
seconds = dict.fromkeys(dets, 0.0)
truth = np.array([r["label"] == "synthetic" for r in rows])
started = time.monotonic()
for row in rows:
    windows = torch_det.windows(_read(data / row["path"]), 16000)
    speech = torch_det.speech(windows)
    reference = None
    for kind, det in dets.items():
        t0 = time.perf_counter()
        scores = det.score_windows(windows)
        seconds[kind] += time.perf_counter() - t0
        if reference is None:
            reference = scores
        worst_window[kind] = max(worst_window[kind], float(np.max(np.abs(scores - reference))))
        clip_scores[kind].append(float(scores.mean()))
        labels[kind].append(torch_det.decide(scores, speech).label)
print(
    f"test split of {data}: {len(rows)} clips "
    f"({int((~truth).sum())} bona fide / {int(truth.sum())} synthetic), "
    f"{time.monotonic() - started:.0f} s, cpus={os.cpu_count()} load={os.getloadavg()}"
)
print(
    f"{'runtime':<18}{'max|dw|':>10}{'max|dclip|':>12}{'labels equal':>14}"
    f"{'EER %':>8}{'95% CI':>16}{'net s':>8}"
)
ref_scores = np.array(clip_scores["torch"])
for kind in dets:
    s = np.array(clip_scores[kind])
    value, _ = eer(s[~truth], s[truth])
    low, high = bootstrap_ci(s[~truth], s[truth], lambda b, y: eer(b, y)[0], n=300, seed=0)
    same = np.mean([a == b for a, b in zip(labels["torch"], labels[kind], strict=True)])
    print(
        f"{kind:<18}{worst_window[kind]:>10.2e}{float(np.max(np.abs(s - ref_scores))):>12.2e}"
        f"{same:>14.4f}{100 * value:>8.2f}   [{100 * low:.1f}, {100 * high:.1f}]{seconds[kind]:>8.1f}"
    )
