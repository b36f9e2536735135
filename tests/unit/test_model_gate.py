"""The ship / no-ship gate: a degraded candidate is refused with its slice named, the shipped
model against itself passes, and `promote` needs a passing gate result (or a recorded override)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.cli import main
from services.detector import default_artifact_dir
from services.errors import FatalError
from services.registry import promote
from tests.support.models import NAME, biased_artifact, registry_with_champion


def test_gate_refuses_a_degraded_candidate_and_passes_the_shipped_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = registry_with_champion(tmp_path / "r")
    # +8 on the calibrated logit: every clip reads synthetic
    registry.register(NAME, biased_artifact(tmp_path / "degraded", 8.0, "degraded"))  # 2
    registry.register(NAME, default_artifact_dir())  # 3: the shipped weights again
    where = ["model", "--registry", str(tmp_path / "r")]
    quick = ["--partial-pairs", "1", "--bootstrap", "300", "--data", str(tmp_path / "no-data-build")]

    assert main([*where, "gate", f"models:/{NAME}/2", *quick]) == 1
    out = capsys.readouterr().out
    assert "REFUSED: slice demo-clips/generator=human regressed by" in out
    gate = registry.get(NAME, 2).eval_results["gate"]
    assert gate["passed"] is False and "demo-clips/generator=human" in gate["regressed"]
    assert gate["champion"] == f"models:/{NAME}/1"
    human = next(s for s in gate["slices"] if s["slice"] == "demo-clips/generator=human")
    assert human["candidate"] == 1.0 and human["ci_low"] > gate["margin"]
    with pytest.raises(FatalError, match="no passing gate"):
        promote(registry, NAME, 2, reason="no gate")

    assert main([*where, "gate", f"models:/{NAME}/3", *quick]) == 0
    assert "PASS" in capsys.readouterr().out
    passed = registry.get(NAME, 3).eval_results
    assert passed["gate"]["passed"] is True and passed["gate"]["regressed"] == []
    assert all(s["delta"] == 0 for s in passed["gate"]["slices"])
    drift = passed["drift_reference"]
    assert sum(drift["counts"]) == drift["n"] == len(drift["scores"]) > 0
    not_speech = next(s for s in passed["gate"]["slices"] if s["slice"] == "not-speech/all")
    assert not_speech["candidate"] == 0.0  # all inconclusive
    assert main([*where, "promote", NAME, "3", "--reason", "gate passed"]) == 0
    assert registry.history(NAME)[-1].extra["gate"] == "passed"

    assert main([*where, "promote", NAME, "2", "--reason", "x"]) == 1
    assert "gate_required" in capsys.readouterr().err
    assert main([*where, "promote", NAME, "2", "--override", "--reason", "incident 42"]) == 0
    last = registry.history(NAME)[-1]
    assert (last.version, last.reason, last.extra) == (
        2,
        "incident 42",
        {"gate": "overridden", "override": True},
    )


def test_the_test_split_joins_when_the_data_build_exists(tmp_path: Path) -> None:
    from services.detector.training.gate import evaluation_items

    demo = default_artifact_dir().parents[2] / "demo_clips"
    (tmp_path / "clips").mkdir()
    for name in ("05-bona_fide-human-en.flac", "23-synthetic-flite-en.flac"):
        shutil.copy(demo / name, tmp_path / "clips" / name)
    header = "path,split,label,generator,language,duration,channel\n"
    rows = [
        "clips/05-bona_fide-human-en.flac,test,bona_fide,human,en,3.2,"
        "narrowband tilt+0.0dB/oct eq+0.0dB@1000Hz clean level-20dBFS gsmq0.50",
        "clips/23-synthetic-flite-en.flac,test,synthetic,flite,en,5.0,"
        "g722@16k tilt+0.0dB/oct eq+0.0dB@1000Hz clean level-20dBFS none",
        "clips/missing.flac,train,bona_fide,human,en,2.0,wideband",
    ]
    (tmp_path / "manifest.csv").write_text(header + "\n".join(rows) + "\n")
    items = [i for i in evaluation_items(partial_pairs=0, data=tmp_path) if i.set == "test-split"]
    assert [i.truth for i in items] == ["bona_fide", "synthetic"]
    assert set(items[0].slices) >= {
        "test-split/channel=narrowband",
        "test-split/codec=gsm",
        "test-split/duration=<4s",
    }
    assert set(items[1].slices) >= {
        "test-split/channel=g722",
        "test-split/codec=none",
        "test-split/duration=4-10s",
    }


def test_a_stored_drift_reference_is_the_reference_of_new_drift_trackers() -> None:
    from services import metrics

    version = "gate-test+r9"
    assert metrics.set_drift_reference(version, [0.5] * 10) is False  # too few: live scores decide
    assert metrics.ScoreDriftTracker().drift("acme", version)._frozen is False
    assert metrics.set_drift_reference(version, [0.1] * metrics.MIN_STORED_REFERENCE) is True
    drift = metrics.ScoreDriftTracker(min_recent=1, update_every=1).drift("acme", version)
    assert drift._frozen is True
    assert drift.observe(0.9) is not None  # compared with the stored reference at once
