"""Reduced-precision ONNX variants (`model export-onnx --quantize`): each is a whole artifact that
scores within its stated tolerance of torch on a few demo clips, registers with its network, and
goes through the gate scored by the ONNX runtime; static int8 is never calibrated without a
training split. Exports here are of the small shipped network: about a second each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.cli import main
from services.detector import ONNX_FILE, ONNX_SIDECAR, Detector, default_artifact_dir, load_detector
from services.detector.training.onnx_variants import export_variant
from tests.support.models import NAME, registry_with_champion

DEMO = Path(__file__).resolve().parents[2] / "services" / "demo_clips"
#: calibrated window scores against torch, stated per precision; measured maxima on the 2,182
#: clips of the test split (docs/models.md): fp16 7.2e-4, int8-dynamic 9.3e-2
TOLERANCE = {"fp16": 2e-3, "int8-dynamic": 1e-1}
CLIPS = ("02-bona_fide-human-cs.flac", "14-bona_fide-human-nl.flac", "16-synthetic-espeak-ng-cs.flac")


@pytest.fixture(scope="module")
def torch_detector() -> Detector:
    return load_detector(device="cpu", threads=1)


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
def test_a_variant_scores_within_its_tolerance(
    precision: str, torch_detector: Detector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / precision
    assert main(["model", "export-onnx", "--quantize", precision, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    record = json.loads((out / ONNX_SIDECAR).read_text())
    assert record["precision"] == precision
    variant = load_detector(out, device="cpu", threads=1, runtime="onnx")
    for clip in CLIPS:
        samples, rate = sf.read(DEMO / clip, dtype="float32")
        windows = torch_detector.windows(samples, rate)
        reference, scores = torch_detector.score_windows(windows), variant.score_windows(windows)
        assert float(np.max(np.abs(reference - scores))) <= TOLERANCE[precision], clip
        speech = torch_detector.speech(windows)
        assert torch_detector.decide(reference, speech).label == variant.decide(scores, speech).label


def test_static_int8_needs_a_training_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "model",
        "export-onnx",
        "--quantize",
        "int8",
        "--out",
        str(tmp_path / "v"),
        "--data",
        str(tmp_path),
    ]
    assert main(args) == 1
    assert "int8 calibration needs the training split" in capsys.readouterr().err
    assert not (tmp_path / "v" / ONNX_FILE).exists()
    # the library path, calibrated on stand-in windows: the record says how many were used
    windows = (0.05 * np.random.default_rng(0).standard_normal((4, 64000))).astype(np.float32)
    export_variant(default_artifact_dir(), tmp_path / "s", "int8", windows, {"split": "train"})
    record = json.loads((tmp_path / "s" / ONNX_SIDECAR).read_text())
    assert record["precision"] == "int8" and record["calibration"] == {"windows": 4, "split": "train"}
    assert load_detector(tmp_path / "s", device="cpu", speech_check=False, runtime="onnx").runtime == "onnx"


def test_a_registered_variant_keeps_its_network_and_is_gated_on_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variant = tmp_path / "fp16"
    export_variant(default_artifact_dir(), variant, "fp16")
    registry = registry_with_champion(tmp_path / "r")
    registry.register(NAME, variant)  # 2
    fetched = registry.fetch(NAME, 2)
    assert (fetched / ONNX_FILE).read_bytes() == (variant / ONNX_FILE).read_bytes()
    where = ["model", "--registry", str(tmp_path / "r")]
    quick = ["--partial-pairs", "0", "--bootstrap", "200", "--data", str(tmp_path / "no-data-build")]
    assert main([*where, "gate", f"models:/{NAME}/2", *quick]) == 0
    assert "(onnx) vs champion v1 (torch)" in capsys.readouterr().out
    gate = registry.get(NAME, 2).eval_results["gate"]
    assert gate["runtimes"] == {"candidate": "onnx", "champion": "torch"} and gate["passed"] is True
