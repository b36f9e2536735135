"""The ONNX Runtime scorer beside the torch one: same window scores within a stated tolerance and
the same labels on the demo clips; a missing or stale export is refused, never scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.detector import Detector, default_artifact_dir, load_detector
from services.detector._artifact import ONNX_SIDECAR
from services.detector.training.onnx_export import export_onnx
from services.errors import FatalError

DEMO = Path(__file__).resolve().parents[2] / "services" / "demo_clips"
#: calibrated window scores, in [0, 1]; measured max abs diff on the 32 demo clips: ~1e-6
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(default_artifact_dir(), out)
    return out


@pytest.fixture(scope="module")
def pair(onnx_dir: Path) -> tuple[Detector, Detector]:
    torch_det = load_detector(device="cpu", threads=1)
    onnx_det = load_detector(device="cpu", threads=1, runtime="onnx", onnx_path=onnx_dir / "network.onnx")
    return torch_det, onnx_det


def test_onnx_scores_equal_torch_on_the_demo_clips(pair: tuple[Detector, Detector]) -> None:
    torch_det, onnx_det = pair
    assert (torch_det.runtime, onnx_det.runtime) == ("torch", "onnx")
    worst = 0.0
    clips = sorted(DEMO.glob("*.flac"))
    assert len(clips) >= 10
    for clip in clips:
        samples, rate = sf.read(clip, dtype="float32")
        windows = torch_det.windows(samples, rate)
        a, b = torch_det.score_windows(windows), onnx_det.score_windows(windows)
        worst = max(worst, float(np.max(np.abs(a - b))))
        speech = torch_det.speech(windows)
        assert torch_det.decide(a, speech).label == onnx_det.decide(b, speech).label, clip.name
    assert worst <= SCORE_TOLERANCE, worst


def test_a_batch_of_64_scores_like_one_at_a_time(pair: tuple[Detector, Detector]) -> None:
    _, onnx_det = pair
    rng = np.random.default_rng(7)
    windows = (0.1 * rng.standard_normal((64, onnx_det.meta.window_samples))).astype(np.float32)
    whole = onnx_det.score_windows(windows)
    single = np.concatenate([onnx_det.score_windows(windows[i : i + 1]) for i in range(0, 64, 16)])
    assert whole.shape == (64,)
    np.testing.assert_allclose(whole[::16], single, atol=SCORE_TOLERANCE)


def test_a_missing_or_stale_export_is_refused(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FatalError) as missing:
        load_detector(device="cpu", runtime="onnx", onnx_path=tmp_path / "network.onnx", speech_check=False)
    assert missing.value.reason == "model_missing"
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "network.onnx").write_bytes((onnx_dir / "network.onnx").read_bytes())
    record = json.loads((onnx_dir / ONNX_SIDECAR).read_text())
    record["weights_sha256"] = "0" * 64
    (stale / ONNX_SIDECAR).write_text(json.dumps(record))
    with pytest.raises(FatalError) as wrong:
        load_detector(device="cpu", runtime="onnx", onnx_path=stale / "network.onnx", speech_check=False)
    assert wrong.value.reason == "model_checksum"


def test_the_worker_picks_the_runtime_from_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from services.settings import load_settings
    from services.tools.worker import load_model

    artifact = tmp_path / "artifact"
    shutil.copytree(default_artifact_dir(), artifact)
    export_onnx(artifact)
    monkeypatch.setenv("AUDIOGUARD_RUNTIME", "onnx")
    settings = load_settings(model_path=str(artifact), device="cpu", torch_threads=1)
    assert settings.runtime == "onnx"
    detector = load_model(settings)
    assert detector.runtime == "onnx"
    scores = detector.score_windows(np.zeros((2, detector.meta.window_samples), dtype=np.float32))
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    assert (
        load_model(load_settings(model_path=str(artifact), device="cpu", runtime="torch")).runtime == "torch"
    )


def test_the_execution_provider_follows_the_device(onnx_dir: Path) -> None:
    from services.detector._onnx import OnnxNetwork, available_providers

    checksum = load_detector(device="cpu", speech_check=False).meta.checksum
    cpu = OnnxNetwork(onnx_dir / "network.onnx", checksum, "cpu", 1)
    assert cpu.providers == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available_providers():
        gpu = OnnxNetwork(onnx_dir / "network.onnx", checksum, "cuda:0", 1)
        assert gpu.providers[0] == ("CUDAExecutionProvider", {"device_id": 0})
    else:  # the CPU wheel: asking for CUDA is a configuration error, not a silent CPU fallback
        with pytest.raises(FatalError) as refused:
            OnnxNetwork(onnx_dir / "network.onnx", checksum, "cuda", 1)
        assert refused.value.reason == "bad_config"
