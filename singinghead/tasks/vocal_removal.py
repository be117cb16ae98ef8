"""Vocal removal: song → (vocals, accompaniment = BGM), behind one interface.

Backends (`SINGINGHEAD_SEPARATION_BACKEND`):
- `builtin`: classical, needs no weights: adaptive REPET. Songs repeat their accompaniment
  (bars, loops, chords) while the melody sung over it does not; the repeating period comes from
  the beat spectrum, the background of every bin is a median over neighbouring periods, and a
  Wiener mask assigns the rest to the voice. Below 120 Hz everything is accompaniment.
  Vocals + accompaniment add up to the song exactly. O(n) in the song's length.
- `demucs`: a demucs model loaded from a local folder in demucs' own format (`<sig>.th`, or a
  bag `<name>.yaml` listing signatures), run in-process with demucs' chunked `apply_model`.
  The `.th` packages are pickles: they are opened with `torch.load(weights_only=True)` and only
  demucs' model classes allowed.
- `spleeter` (what MusicFace used, 2 stems): spleeter's pins (TensorFlow 2.12, numpy < 2,
  Python < 3.12) cannot live in our environment, so it runs as a separate process from its own
  environment (`SINGINGHEAD_SPLEETER_ENV`) with local weights (`SINGINGHEAD_SPLEETER_MODELS`).

Results are cached in the catalog per song checksum + backend + backend version + model.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from singinghead.capture_rigs.audio_files import read_audio
from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.errors import AssetError, InputError
from singinghead.schemas.settings import get_settings, torch_device
from singinghead.storage import files
from singinghead.storage.catalog import Catalog, cache_key

STEP = "separate"
BUILTIN_VERSION = "2"


@dataclass(frozen=True)
class Separation:
    vocals: np.ndarray  # samples × channels, float32
    accompaniment: np.ndarray
    sample_rate: int


# -- builtin -------------------------------------------------------------------------------
def repeating_period(power: np.ndarray, sr: int, hop: int, lo_s: float = 1.0, hi_s: float = 8.0) -> int:
    """The accompaniment's repeating period in frames: the peak of the beat spectrum (the
    autocorrelation over time of the power spectrogram, averaged over frequency; REPET)."""
    n = power.shape[1]
    spec = np.fft.rfft(power, n=2 * n, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n].mean(axis=0) / np.arange(n, 0, -1)
    lo, hi = max(1, int(lo_s * sr / hop)), max(2, min(int(hi_s * sr / hop), n // 3))
    if hi <= lo:
        return lo
    return lo + int(np.argmax(ac[lo:hi]))


def separate_builtin(song: np.ndarray, sr: int, n_fft: int = 2048, hop: int = 512, repeats: int = 3,
                     bass_hz: float = 120.0) -> Separation:
    """Adaptive REPET (Rafii & Pardo): the accompaniment repeats, the voice does not.

    Each time-frequency bin's background is the median of the same bin one, two, three periods
    before and after; a Wiener mask (power 2) of that background against the rest gives the
    accompaniment. Below `bass_hz` everything is accompaniment. Vocals + accompaniment = song.
    """
    import librosa

    specs = [librosa.stft(song[:, c], n_fft=n_fft, hop_length=hop) for c in range(song.shape[1])]
    mag = np.mean([np.abs(x) for x in specs], axis=0)
    n = mag.shape[1]
    period = repeating_period(mag**2, sr, hop)
    frames = np.arange(n)
    stack = []
    for k in range(-repeats, repeats + 1):
        shifted = mag[:, np.clip(frames + k * period, 0, n - 1)]
        outside = (frames + k * period < 0) | (frames + k * period >= n)
        shifted[:, outside] = np.nan
        stack.append(shifted)
    background = np.minimum(np.nanmedian(np.stack(stack), axis=0), mag)
    acc_mask = librosa.util.softmask(background, mag - background, power=2)
    acc_mask[librosa.fft_frequencies(sr=sr, n_fft=n_fft) < bass_hz] = 1.0
    vocals = np.stack([librosa.istft((1.0 - acc_mask) * x, hop_length=hop, length=len(song)) for x in specs],
                      axis=1).astype(np.float32)
    return Separation(vocals, (song - vocals).astype(np.float32), sr)


# -- demucs --------------------------------------------------------------------------------
def load_demucs(folder: str | Path, name: str):
    """A demucs model or bag from a local folder, unpickled with weights_only=True."""
    import torch
    import yaml
    from demucs.apply import BagOfModels
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    from demucs.states import load_model

    folder = Path(folder)
    if not folder.is_dir():
        raise AssetError(f"SINGINGHEAD_DEMUCS_DIR={folder}: not a folder (put demucs' .th/.yaml files there)")

    def one(sig: str):
        found = sorted(folder.glob(f"{sig}.th")) + sorted(folder.glob(f"{sig}-*.th"))
        if not found:
            raise AssetError(f"demucs model {sig!r}: no {sig}.th in {folder}")
        with torch.serialization.safe_globals([HTDemucs, HDemucs, Demucs]):
            package = torch.load(found[0], map_location="cpu", weights_only=True)
        return load_model(package)

    bag_file = folder / f"{name}.yaml"
    if bag_file.is_file():
        spec = yaml.safe_load(bag_file.read_text())
        models = [one(sig) for sig in spec["models"]]
        return BagOfModels(models, spec.get("weights"), spec.get("segment"))
    return one(name)


def separate_demucs(song: np.ndarray, sr: int, model, device: str = "auto", segment: float | None = None
                    ) -> Separation:
    import torch
    from demucs.apply import apply_model

    device = torch_device(None if device == "auto" else device)  # auto: SINGINGHEAD_DEVICE
    if sr != model.samplerate:
        raise InputError("song", f"demucs model expects {model.samplerate} Hz, got {sr} Hz")
    mix = torch.from_numpy(np.ascontiguousarray(song.T[: model.audio_channels])).float()
    if mix.shape[0] < model.audio_channels:
        mix = mix.repeat(model.audio_channels, 1)
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.inference_mode():
        out = apply_model(model, ((mix - mean) / std)[None], device=device, split=True, overlap=0.25,
                          segment=segment, progress=False)[0]
    out = out * std + mean
    vocals = out[model.sources.index("vocals")].T.numpy().astype(np.float32)
    return Separation(vocals, (song[:, : vocals.shape[1]] - vocals).astype(np.float32), sr)


# -- spleeter ------------------------------------------------------------------------------
def separate_spleeter(song_path: str | Path, env: Path | None, models: Path | None) -> Separation:
    python = Path(env) / "bin" / "python" if env else None
    if python is None or not python.is_file():
        raise AssetError(
            "the spleeter backend needs its own environment (spleeter 2.4.2 pins TensorFlow 2.12, numpy<2, "
            "Python<3.12): create one, e.g. `python3.10 -m venv /opt/spleeter && /opt/spleeter/bin/pip install "
            "spleeter==2.4.2`, and set SINGINGHEAD_SPLEETER_ENV=/opt/spleeter"
            + (f" (now: {env})" if env else " (now: unset)")
        )
    if models is None or not (Path(models) / "2stems").is_dir():
        raise AssetError("the spleeter backend needs its 2stems weights locally: set SINGINGHEAD_SPLEETER_MODELS "
                         "to the folder holding pretrained_models/2stems (nothing is downloaded at run time)")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [str(python), "-m", "spleeter", "separate", "-p", "spleeter:2stems", "-o", tmp, str(song_path)],
            capture_output=True, text=True, env={"MODEL_PATH": str(models), "PATH": "/usr/bin:/bin"},
        )
        if proc.returncode != 0:
            raise InputError(song_path, f"spleeter failed: {proc.stderr.strip()[-500:]}")
        stem_dir = Path(tmp) / Path(song_path).stem
        vocals, sr = sf.read(stem_dir / "vocals.wav", dtype="float32", always_2d=True)
        accomp, _ = sf.read(stem_dir / "accompaniment.wav", dtype="float32", always_2d=True)
    return Separation(vocals, accomp, sr)


# -- interface -----------------------------------------------------------------------------
def backend_id(backend: str | None = None) -> dict:
    """What identifies a separation result besides the song: backend, its version, the model."""
    settings = get_settings()
    backend = backend or settings.separation_backend
    if backend == "builtin":
        return {"backend": "builtin", "version": BUILTIN_VERSION}
    if backend == "demucs":
        import demucs

        return {"backend": "demucs", "version": demucs.__version__, "model": settings.demucs_model,
                "folder": str(settings.demucs_dir)}
    if backend == "spleeter":
        return {"backend": "spleeter", "version": "2.4.2", "model": "2stems"}
    raise AssetError(f"SINGINGHEAD_SEPARATION_BACKEND={backend!r}: expected builtin, demucs or spleeter")


def separate(song_path: str | Path, backend: str | None = None) -> Separation:
    """Split a song file into vocals and accompaniment with the configured backend."""
    settings = get_settings()
    ident = backend_id(backend)
    if ident["backend"] == "spleeter":
        return separate_spleeter(song_path, settings.spleeter_env, settings.spleeter_models)
    song, sr = read_audio(song_path)
    if ident["backend"] == "builtin":
        return separate_builtin(song, sr)
    if settings.demucs_dir is None:
        raise AssetError("the demucs backend needs SINGINGHEAD_DEMUCS_DIR: a folder with demucs models in demucs' "
                         "format (e.g. htdemucs.yaml + its .th files from the demucs release)")
    model = load_demucs(settings.demucs_dir, settings.demucs_model)
    if sr != model.samplerate:
        song, sr = read_audio(song_path, sample_rate=model.samplerate)
    return separate_demucs(song, sr, model)


def separate_cached(song_path: str | Path, song_sha256: str, out: str, backend: str | None = None
                    ) -> tuple[ArtifactRef, ArtifactRef]:
    """Separated stems at the song's rate (float WAV), computed once per song + backend."""
    ident = backend_id(backend)
    catalog = Catalog(out)
    inputs = {"song": song_sha256}
    done = catalog.lookup(STEP, ident["version"], ident, inputs)
    if done is not None:
        return done.outputs[0], done.outputs[1]
    result = separate(song_path, ident["backend"])
    key = cache_key(STEP, ident["version"], ident, inputs)
    base = files.join(out, "songs", song_sha256[:16], STEP, key[:16])
    refs = []
    for name, data in (("vocals", result.vocals), ("accompaniment", result.accompaniment)):
        url = files.join(base, f"{name}.wav")
        with files.atomic_output(url) as tmp:
            sf.write(tmp, data, result.sample_rate, subtype="FLOAT", format="WAV")
        refs.append(files.artifact_ref(url, stem=name, sample_rate=result.sample_rate, **ident))
    catalog.record(STEP, ident["version"], ident, inputs, refs, meta={"song": str(song_path)})
    return refs[0], refs[1]
