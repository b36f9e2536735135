"""Reduced-precision variants of the exported ONNX network, made to go through the same gate.

Three precisions besides the exporter's fp32:

- `int8`: static quantization (QDQ, per-channel int8 weights, activations calibrated with
  MinMax on front-end features of **training-split** windows: never dev, never test, so the
  gate's sets stay unseen);
- `int8-dynamic`: int8 weights, activation ranges computed per batch at run time (no
  calibration set; ONNX Runtime's ConvInteger / MatMulInteger kernels);
- `fp16`: every initializer and op in float16, float32 at the graph's input and output
  (`keep_io_types`), so the worker feeds and reads float32 as for fp32.

A variant is a whole artifact folder: manifest, weights and card copied unchanged (so it
registers like any artifact and keeps the weights' sha256), plus its `network.onnx` and the
sidecar, which records `precision` and, for static int8, how many calibration windows from
which data build. A worker serves it with `runtime = "onnx"`; under `runtime = "torch"` the
same version scores with the fp32 weights.

This module must never evaluate a variant or decide whether it ships: `audioguard model gate`
does, against the champion, with the same rule as for any candidate.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._artifact import MANIFEST_FILE, ONNX_SIDECAR, WEIGHTS_FILE, sha256_file
from .onnx_export import export_onnx

PRECISIONS = ("fp32", "int8", "int8-dynamic", "fp16")
CARD_FILE = "model-card.md"


def calibration_windows(
    data: Path, artifact: Path, clips: int = 200, seed: int = 0
) -> tuple[np.ndarray, str]:
    """`artifact`'s windows of `clips` training-split clips of the data build at `data` (half per label,
    seeded), at the model's rate; returns them and the manifest's sha256. Raises FatalError
    ("bad_config") when there is no data build: static int8 is never calibrated on anything else."""
    import hashlib

    from services.detector import load_detector
    from services.errors import FatalError

    from .gate import _read

    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise FatalError(
            "bad_config",
            f"int8 calibration needs the training split of a data build ({manifest} is missing): "
            "run `audioguard data build`, or use --quantize int8-dynamic",
        )
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "train"]
    rng = np.random.default_rng(seed)
    picked: list[dict[str, str]] = []
    for label in ("bona_fide", "synthetic"):
        of_label = [r for r in rows if r["label"] == label]
        order = rng.permutation(len(of_label))[: clips // 2]
        picked += [of_label[i] for i in sorted(order)]
    detector = load_detector(artifact, device="cpu", speech_check=False)
    windows = [detector.windows(_read(data / r["path"]), 16000) for r in picked]
    return np.concatenate(windows), hashlib.sha256(manifest.read_bytes()).hexdigest()


def _features(artifact: Path, windows: np.ndarray, batch: int = 32) -> Iterator[np.ndarray]:
    import torch

    from services.detector import load_detector

    detector = load_detector(artifact, device="cpu", speech_check=False)
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            yield detector._net.frontend(torch.from_numpy(windows[start : start + batch])).numpy()


def export_variant(
    artifact: Path,
    out: Path,
    precision: str,
    calibration: np.ndarray | None = None,
    calibration_source: dict[str, object] | None = None,
) -> Path:
    """A copy of `artifact` in `out` whose network.onnx has `precision`; returns its path.

    `calibration` ((n, window_samples) float32 windows) is required for `int8` and ignored
    otherwise; `calibration_source` is recorded in the sidecar (where the windows came from)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and (calibration is None or len(calibration) == 0):
        raise ValueError("static int8 needs calibration windows from the training split")
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != artifact.resolve():
        for part in (WEIGHTS_FILE, MANIFEST_FILE, CARD_FILE):
            if (artifact / part).is_file():
                shutil.copy2(artifact / part, out / part)
    target = export_onnx(out)
    record = json.loads((out / ONNX_SIDECAR).read_text())
    if precision != "fp32":
        with tempfile.TemporaryDirectory(prefix="onnx-variant-") as work:
            fp32 = Path(work) / "fp32.onnx"
            shutil.move(str(target), fp32)
            if precision == "fp16":
                _to_fp16(fp32, target)
            elif precision == "int8-dynamic":
                _to_int8_dynamic(fp32, target)
            else:
                assert calibration is not None
                _to_int8_static(fp32, target, list(_features(out, calibration)))
                record["calibration"] = {"windows": int(len(calibration)), **(calibration_source or {})}
    record.update({"precision": precision, "sha256": sha256_file(target)})
    (out / ONNX_SIDECAR).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target


def _to_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def _to_int8_dynamic(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def _to_int8_static(source: Path, target: Path, batches: list[np.ndarray]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._left = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._left, None)
            return None if batch is None else {"features": batch.astype(np.float32)}

    quantize_static(
        str(source),
        str(target),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


__all__ = ["PRECISIONS", "calibration_windows", "export_variant"]
