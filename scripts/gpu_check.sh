#!/usr/bin/env bash
# The GPU checks in one run (< 8 min on one device): forward windows/s over batch sizes 1..1024,
# the bench with --device cuda (smoke sizes, so the whole script fits), and the CUDA-vs-CPU score
# agreement tests (tests/gpu/). Run from the repository root on a machine with CUDA:
#   scripts/gpu_check.sh [out-dir]        # default gpu-out/
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-.venv/bin/python}"
OUT="${1:-gpu-out}"
mkdir -p "$OUT"
uptime | tee "$OUT/uptime.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true

echo "== forward windows/s by batch size (device cuda) =="
timeout 180 "$PY" - <<'PY' | tee "$OUT/forward.txt"
import json, time
import numpy as np
from services.detector import load_detector

det = load_detector(device="cuda")
assert det.device.startswith("cuda"), det.device
rng = np.random.default_rng(0)
rows = []
for size in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
    windows = (0.1 * rng.standard_normal((size, det.meta.window_samples))).astype(np.float32)
    det.score_windows(windows)  # warm-up: kernels, allocator
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2.0:
        det.score_windows(windows)  # includes host->device copy and the result's copy back
        done += size
    seconds = time.perf_counter() - started
    rows.append({"batch": size, "windows_per_s": round(done / seconds, 1),
                 "ms_per_batch": round(1000 * seconds * size / done, 2), "memory": det.memory_stats()})
    print(json.dumps(rows[-1]), flush=True)
PY

echo "== bench --device cuda (smoke sizes) =="
timeout 150 "$PY" -m services.cli bench --smoke --device cuda --out "$OUT" | tee "$OUT/bench.txt"
echo "== bench --device cuda --scorer null (the framework's ceiling on this host) =="
timeout 90 "$PY" -m services.cli bench --smoke --scorer null --out "$OUT/null" | tee "$OUT/bench-null.txt"

echo "== CUDA vs CPU agreement (tests/gpu) =="
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/gpu | tee "$OUT/tests-gpu.txt"
uptime | tee -a "$OUT/uptime.txt"
