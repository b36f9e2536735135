"""The partial-spoof builder places the spliced clip where it says, and the report is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from services.detector.training.partial import build_partial_spoof
from tests.support.models import shipped_version

DEMO = Path(__file__).resolve().parents[2] / "services" / "demo_clips"


def test_pairs_share_a_host_and_the_span_is_the_extra_audio() -> None:
    trials = build_partial_spoof(DEMO, pairs=3, seed=5)
    assert [t.label for t in trials] == ["partial", "bona_fide"] * 3
    for partial, twin in zip(trials[::2], trials[1::2], strict=True):
        assert partial.language == twin.language and twin.span is None
        assert partial.span is not None and 0.0 <= partial.span[0] < partial.span[1] <= partial.duration
        spliced = partial.span[1] - partial.span[0]
        # the partial trial is its twin plus the spliced clip (codec delay aside)
        assert abs(partial.duration - twin.duration - spliced) < 0.15
        assert np.isfinite(partial.samples).all() and partial.samples.dtype == np.float32
    again = build_partial_spoof(DEMO, pairs=3, seed=5)
    assert [t.span for t in again] == [t.span for t in trials], "seeded: the same set every time"


def test_the_command_builds_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "ps"
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "data",
        "partial-spoof",
        "--pairs",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["pairs"] == 2 and report["model"].endswith(f"@{shipped_version()}")
    for key in (
        "eer_upload_score",
        "eer_max_window_score",
        "span_hit_rate",
        "span_mean_iou",
        "window_accuracy",
    ):
        assert 0.0 <= report[key] <= 1.0, key
    assert len(list(out.glob("*.flac"))) == 4 and (out / "report.json").is_file()
    rows = (out / "partial_spoof.csv").read_text().splitlines()
    assert rows[0].startswith("file,label") and len(rows) == 5
