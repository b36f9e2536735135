"""The detector on CUDA: same scores as on the CPU, and a real out-of-memory mapped to ResourceExhausted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_cuda_scores_match_cpu() -> None:
    from services.detector import load_detector

    gpu = load_detector(device="auto")
    cpu = load_detector(device="cpu")
    assert gpu.device == "cuda"
    rng = np.random.default_rng(0)
    windows = (rng.standard_normal((16, gpu.meta.window_samples)) * 0.1).astype(np.float32)
    a, b = gpu.score_windows(windows), cpu.score_windows(windows)
    assert np.allclose(a, b, atol=2e-3)
    assert np.array_equal(gpu.score_windows(windows), a)  # deterministic on the device too


def test_cuda_oom_is_resource_exhausted() -> None:
    from services.detector import load_detector
    from services.errors import ResourceExhausted

    det = load_detector(device="cuda")
    free, _ = torch.cuda.mem_get_info()
    # occupy nearly all free memory so a modest batch cannot fit
    hog = torch.empty(int(free * 0.97) // 4, dtype=torch.float32, device="cuda")
    try:
        windows = np.zeros((512, det.meta.window_samples), dtype=np.float32)
        with pytest.raises(ResourceExhausted) as info:
            det.score_windows(windows)
        assert info.value.reason == "cuda_oom"
    finally:
        del hog
        torch.cuda.empty_cache()
    # after the split the caller would do, a small batch works again
    assert det.score_windows(np.zeros((2, det.meta.window_samples), np.float32)).shape == (2,)


def test_cuda_agrees_with_cpu_on_real_speech() -> None:
    # The excitation channels amplify rounding in the autocorrelation on band-limited frames
    # (docs/model-card.md, "Known failure modes"); cuFFT is not pocketfft, so compare on speech,
    # where that matters, not only on noise.
    import soundfile as sf

    from services.detector import load_detector
    from services.detector.training.demo import DEMO_DIR

    gpu, cpu = load_detector(device="cuda"), load_detector(device="cpu")
    gaps, disagreements = [], 0
    for path in sorted(DEMO_DIR.glob("*.flac")):
        samples, rate = sf.read(path, dtype="float32")
        a, b = gpu.score_samples(samples, rate), cpu.score_samples(samples, rate)
        gaps.append(abs(a.score - b.score))
        disagreements += a.label != b.label
    assert len(gaps) >= 20
    assert max(gaps) < 0.05 and disagreements <= 1, (max(gaps), disagreements)
