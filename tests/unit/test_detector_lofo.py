"""Leave-one-family-out on a tiny generated set: each fold trains without its family (in train
and dev), scores all of that family's clips against the test split's bona fide, and the report
says mean and worst. Uses test_detector_train's set, with its synthetic side split into two
families and a test split added."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from services.cli import build_parser
from services.detector.training import lofo as lofo_module
from services.detector.training.data import write_manifest
from services.detector.training.lofo import leave_one_family_out, training_families
from services.detector.training.train import TrainConfig
from tests.unit.test_detector_train import _write_set


def _two_families(root: Path) -> Path:
    data = _write_set(root)
    with (data / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    synthetic = [r for r in rows if r["label"] == "synthetic"]
    for i, row in enumerate(synthetic):
        row["generator"] = "family-a" if i % 2 == 0 else "family-b"
    # the last two training takes of each label become the test split (dev keeps one of each family)
    for label in ("bona_fide", "synthetic"):
        for row in [r for r in rows if r["label"] == label and r["split"] == "train"][-2:]:
            row["split"] = "test"
    write_manifest(data / "manifest.csv", rows)
    return data


def test_every_fold_holds_its_family_out_of_training_and_scores_all_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _two_families(tmp_path / "data")
    with (data / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert training_families(rows) == ["family-a", "family-b"]
    trained_on: list[tuple[str, ...]] = []
    real_train = lofo_module.train

    def recording_train(path: Path, cfg: TrainConfig):  # type: ignore[no-untyped-def]
        trained_on.append(cfg.hold_out)
        net, nc, summary = real_train(path, cfg)
        generators = {c.row["generator"] for c in summary["_dev_clips"]}
        assert not generators & set(cfg.hold_out), "the held-out family reached dev"
        return net, nc, summary

    monkeypatch.setattr(lofo_module, "train", recording_train)
    cfg = TrainConfig(minutes=2.0, epochs=1, batch_size=4, threads=1, progress=False)
    report = leave_one_family_out(data, tmp_path / "out", cfg, bootstrap=20)
    assert trained_on == [("family-a",), ("family-b",)]
    for fold in report["folds"]:
        family = fold["family"]
        every_clip = sum(1 for r in rows if r["label"] == "synthetic" and r["generator"] == family)
        assert fold["held_out"]["n_synthetic"] == every_clip  # all splits, not just test
        assert fold["held_out"]["n_bona_fide"] == 2  # the test split's bona fide only
        assert 0.0 <= fold["held_out"]["eer"] <= 1.0
        assert 0.0 <= fold["held_out_ece"] <= 1.0
        # each fold trained on fewer clips than the whole set: its family was left out
        assert fold["train_clips"] < sum(1 for r in rows if r["split"] == "train")
    held = [f["held_out"]["eer"] for f in report["folds"]]
    assert report["worst_held_out_eer"] == max(held)
    assert report["mean_held_out_eer"] == pytest.approx(sum(held) / len(held))
    eces = [f["held_out_ece"] for f in report["folds"]]
    assert report["mean_held_out_ece"] == pytest.approx(sum(eces) / len(eces))
    assert json.loads((tmp_path / "out" / "lofo.json").read_text())["folds_planned"] == [
        "family-a",
        "family-b",
    ]
    assert (tmp_path / "out" / "lofo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Leave-one-generator-family-out" in (tmp_path / "out" / "lofo.md").read_text()


def test_an_unknown_family_is_refused_with_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _two_families(tmp_path / "data")
    args = build_parser().parse_args(
        ["lofo", "--data", str(data), "--out", str(tmp_path / "o"), "--family", "nope"]
    )
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "family-a" in err
