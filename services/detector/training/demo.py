"""`audioguard data demo-clips`: copy a small, labelled, held-out sample into services/demo_clips/.

Picks clips of 2-5 s from the test split only (speakers and voices the model never trained on),
spread over labels, generators and languages, and writes them as FLAC with labels.csv and a
PROVENANCE.md naming each clip's source package, version and licence.

This module must never pick from the train or dev splits.
"""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from .data import read_manifest

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_clips"


def export_demo_clips(data: Path, dest: Path = DEMO_DIR, n: int = 30, seed: int = 7) -> list[dict[str, str]]:
    # 2-5 s where the group has such clips; the short-word English sources only reach 1-2 s
    rows = [r for r in read_manifest(data) if r["split"] == "test" and 1.0 <= float(r["duration"]) <= 5.0]
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["generator"], r["language"])].append(r)
    rng = np.random.default_rng(seed)
    for key, g in groups.items():
        order = rng.permutation(len(g))
        # pop() takes from the end: put the >= 2 s clips there
        groups[key] = sorted((g[i] for i in order), key=lambda r: float(r["duration"]) >= 2.0)
    bona = sorted(k for k in groups if k[0] == "bona_fide")
    synth = sorted(k for k in groups if k[0] == "synthetic")
    picked: list[dict[str, str]] = []
    # round-robin over groups so every generator and language appears, half of each label
    for keys, quota in ((bona, n // 2), (synth, n - n // 2)):
        i = 0
        taken = 0
        while taken < quota and any(groups[k] for k in keys):
            k = keys[i % len(keys)]
            if groups[k]:
                picked.append(groups[k].pop())
                taken += 1
            i += 1
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.flac"):
        old.unlink()
    out_rows = []
    for j, r in enumerate(sorted(picked, key=lambda r: (r["label"], r["generator"], r["language"])), 1):
        name = f"{j:02d}-{r['label']}-{r['generator']}-{r['language']}.flac"
        shutil.copyfile(data / r["path"], dest / name)
        out_rows.append(
            {
                "file": name,
                "label": r["label"],
                "generator": r["generator"],
                "language": r["language"],
                "source": f"{r['source_package']} {r['source_version']}",
                "licence": r["licence"],
                "speaker": r["speaker"],
                "channel": r["channel"],
                "text": r["text"],
            }
        )
    with (dest / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "label", "generator", "language", "source"])
        w.writeheader()
        w.writerows(
            {k: row[k] for k in ("file", "label", "generator", "language", "source")} for row in out_rows
        )
    lines = [
        "# Demo clips: provenance",
        "",
        "Thirty short clips from the detector's **test** split (speakers and voices never used in",
        "training or threshold calibration), written by `audioguard data demo-clips` from the data set",
        "that `audioguard data build` makes. Every clip went through the same random recording chain as",
        "the training data (band limit / G.722, EQ, noise, level, MP3/Opus), listed per clip below.",
        "Synthetic clips speak lines of the fillets-ng dialogues (fillets-ng-data, GPL-2+).",
        "",
        "| file | label | generator | language | source package and version | licence | speaker / voice "
        "| chain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in out_rows:
        lines.append(
            f"| {row['file']} | {row['label']} | {row['generator']} | {row['language']} | {row['source']} "
            f"| {row['licence']} | {row['speaker']} | {row['channel']} |"
        )
    lines += [
        "",
        "Licences in short: asterisk-core-sounds-* are CC-BY-SA-3.0 (Digium / Allison Smith, June Wallack);",
        "fillets-ng-data-* are GPL-2+; klettres-data and ktuberling-data are GPL-2+ (KDE); espeak-ng is",
        "GPL-3+; flite is BSD-like (CMU); festvox voices carry the festival/CMU/EST licences named in",
        "their Debian copyright files; piper-tts is GPL-3.0-or-later and the joe voice MIT; resynthesised",
        "clips (griffin-lim, world, lpc-vocoder, cepstral-vocoder, phase-vocoder) keep the licence of the",
        "bona fide recording they were made from.",
        "",
    ]
    (dest / "PROVENANCE.md").write_text("\n".join(lines))
    return out_rows
