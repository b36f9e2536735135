"""Cost per 4 s window, torch (TorchScript trace) vs ONNX Runtime, at batch 1 and 64 on THREADS
threads (default 2), in interleaved pairs (the order alternates each round) so machine load hits
both alike. Rows: the whole scorer (front end in torch + network) and the network alone (the
only part ONNX Runtime runs). Prints medians and the load average; asserts nothing. Each
VARIANT_DIR (an artifact from `audioguard model export-onnx --quantize ... --out`) adds a column,
timed in the same rotation.

    .venv/bin/python scripts/onnx_cost.py [ROUNDS] [THREADS] [DEVICE] [VARIANT_DIR...]
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.detector import default_artifact_dir, load_detector  # noqa: E402 - after the path set-up
from services.detector.training.onnx_export import _Classify, export_onnx  # noqa: E402

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
DEVICE = sys.argv[3] if len(sys.argv) > 3 else "cpu"
VARIANTS = [Path(p) for p in sys.argv[4:]]

out = Path(tempfile.mkdtemp(prefix="onnx-cost-"))
onnx_path = export_onnx(default_artifact_dir(), out)
dets = {
    "torch": load_detector(device=DEVICE, threads=THREADS, speech_check=False),
    "onnx": load_detector(
        device=DEVICE, threads=THREADS, speech_check=False, runtime="onnx", onnx_path=onnx_path
    ),
}
for variant in VARIANTS:
    precision = json.loads((variant / "network.onnx.json").read_text())["precision"]
    dets[f"onnx-{precision}"] = load_detector(
        variant, device=DEVICE, threads=THREADS, speech_check=False, runtime="onnx"
    )
KINDS = list(dets)
clips = sorted((Path(__file__).resolve().parents[1] / "services" / "demo_clips").glob("*.flac"))
wins = []
for clip in clips:
    samples, rate = sf.read(clip, dtype="float32")
    wins.append(dets["torch"].windows(samples, rate))
pool = np.concatenate(wins)
pool = np.concatenate([pool] * (64 // len(pool) + 1))[:64]

import torch  # noqa: E402 - only for the network-alone rows

net = dets["torch"]._net
with torch.no_grad():
    feats64 = net.frontend(torch.from_numpy(pool).to(DEVICE))
classify = torch.jit.trace(_Classify(net), feats64[:1])


def run_whole(kind: str, batch: np.ndarray) -> None:
    dets[kind].logits(batch)


def run_net(kind: str, batch: np.ndarray, feats: torch.Tensor) -> None:
    if kind.startswith("onnx"):
        dets[kind]._onnx.run(feats.cpu().numpy())
    else:
        with torch.inference_mode():
            classify(feats).cpu()


results: dict[tuple[str, str, int], list[float]] = {}
for b in (1, 64):
    batch, feats = pool[:b], feats64[:b]
    for kind in KINDS:  # warm-up
        for _ in range(3):
            run_whole(kind, batch)
            run_net(kind, batch, feats)
    reps = 20 if b == 1 else 2
    for r in range(ROUNDS):
        order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]
        for part in ("whole", "net"):
            for kind in order:
                t0 = time.perf_counter()
                for _ in range(reps):
                    run_whole(kind, batch) if part == "whole" else run_net(kind, batch, feats)
                dt = (time.perf_counter() - t0) / (reps * b)
                results.setdefault((part, kind, b), []).append(dt * 1e3)

print(f"device={DEVICE} threads={THREADS} rounds={ROUNDS} cpus={os.cpu_count()} load={os.getloadavg()}")
print("ms/window, medians; (x) = torch / that runtime")
print(f"{'part':<6}{'batch':>6}" + "".join(f"{kind:>24}" for kind in KINDS))
for part in ("whole", "net"):
    for b in (1, 64):
        t = median(results[(part, "torch", b)])
        ms = {k: median(results[(part, k, b)]) for k in KINDS}
        cells = [f"{ms[k]:.3f} ({t / ms[k]:.2f}x)" for k in KINDS]
        print(f"{part:<6}{b:>6}" + "".join(f"{c:>24}" for c in cells))
