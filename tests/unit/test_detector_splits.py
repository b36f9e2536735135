"""Split hygiene of the data plan, without the Debian sources: which generator may pair with a
take of which split. A leak here (a reserved generator in training, dev's own generator in
train) would make every test or dev number a look at data the model was fitted on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from services.detector.training import data as D
from services.detector.training import sources as S


def _take(split: str, language: str) -> S.Utterance:
    return S.Utterance(f"k/{split}/{language}", Path("x.wav"), None, False, "spk", language, split, "pkg")


def _generators(split: str, language: str, monkeypatch: pytest.MonkeyPatch, texts: bool) -> Counter[str]:
    monkeypatch.setattr(S, "dialog_lines", lambda lang: ("a line of text",) if texts else ())
    rng = np.random.default_rng(0)
    return Counter(D._synthetic_choice(_take(split, language), rng)[0] for _ in range(3000))


@pytest.mark.parametrize("language", ["en", "cs"])
def test_reserved_generators_pair_with_test_takes_only(
    language: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for split in ("train", "dev"):
        assert not {"world", "festival-hts"} & set(_generators(split, language, monkeypatch, True))
    test = _generators("test", language, monkeypatch, True)
    assert "world" in test and ("festival-hts" in test) == (language == "en")


def test_piper_is_devs_own_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "piper" not in _generators("train", "en", monkeypatch, True)
    assert "piper" not in _generators("test", "en", monkeypatch, True)
    dev = _generators("dev", "hu", monkeypatch, False)
    # any dev take pairs with it, even one of a language without dialogue lines
    assert dev["piper"] > 300


def test_a_language_without_texts_pairs_by_copy_synthesis(monkeypatch: pytest.MonkeyPatch) -> None:
    found = set(_generators("train", "uk", monkeypatch, False))
    assert found <= set(D.RESYNTHESIS) and {"griffin-lim", "lpc-vocoder", "cepstral-vocoder"} <= found


def test_every_kde_pack_lives_in_one_split() -> None:
    # a language recorded for both KDE games may be one person: it must not straddle splits
    for lang in set(S._KLETTRES_SPLIT) & set(S._KTUBERLING_SPLIT):
        pair = (S._KLETTRES_SPLIT[lang], S._KTUBERLING_SPLIT[lang])
        if lang in {"en", "fr"}:
            # 2.0.0's assignment, kept so the test split stays clip for clip: dev and test, never train
            assert "train" not in pair
        else:
            assert pair[0] == pair[1], lang


def _choices(split: str, builder: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(S, "dialog_lines", lambda lang: ("a line of text",))
    return [D._synthetic_choice(_take(split, "en"), np.random.default_rng(i), builder)[0] for i in range(600)]


def test_builder_4_adds_the_phase_vocoder_to_every_split_and_builder_3_never_draws_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for split in ("train", "dev", "test"):
        old, new = _choices(split, "3.0.0", monkeypatch), _choices(split, "4.0.0", monkeypatch)
        assert "phase-vocoder" not in old and new.count("phase-vocoder") > 30
        assert old == _choices(split, D.BUILDER_VERSION, monkeypatch)  # the default is still 3.0.0
    with pytest.raises(ValueError, match="unknown builder version"):
        D.plan(1234, 1, "9.9.9")


def test_an_unknown_builder_version_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown builder version '2.0.0': one of 3.0.0, 4.0.0"):
        D.build_dataset(tmp_path, builder="2.0.0", install=True)
    assert not any(tmp_path.iterdir())
