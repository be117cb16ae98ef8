"""The paper's dataset statistics (SPEC §2.11) for a release, as PNG plots and `stats/stats.json`.

Shares of song category, professional/amateur, gender and language (pies); dominant frequency
(median YIN f0 of the voiced frames) and tempo (librosa) of each window's singing audio;
mean chromagram per category; mouth opening of every frame (from the landmarks); durations of
the released sequences. Per-window audio statistics are cached in `stats/windows.json`, so a
build only analyses its new windows.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict

import librosa
import matplotlib
import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from singinghead.schemas import release as R
from singinghead.storage import files
from singinghead.storage import release as store

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def singing_stats(y: np.ndarray, sr: int = R.SAMPLE_RATE) -> dict:
    """Dominant frequency (Hz, median f0 of voiced frames), tempo (BPM) and mean chroma (12)."""
    f0 = librosa.yin(y, fmin=65.0, fmax=1000.0, sr=sr, frame_length=2048)
    rms = librosa.feature.rms(y=y, frame_length=2048, hop_length=512)[0][: len(f0)]
    voiced = rms > max(0.1 * rms.max(initial=0.0), 1e-4)
    tempo = float(np.atleast_1d(librosa.feature.tempo(y=y, sr=sr))[0])
    chroma = librosa.feature.chroma_stft(y=y, sr=sr).mean(axis=1)
    return {"dominant_hz": float(np.median(f0[voiced[: len(f0)]])) if voiced.any() else float("nan"),
            "bpm": tempo, "chroma": [float(c) for c in chroma]}


def _save(fig, url: str) -> None:
    with files.atomic_output(url, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def release_stats(release: str, manifest: list[dict]) -> dict:
    cache_url = files.join(release, "stats", "windows.json")
    cache = files.read_json(cache_url) if files.exists(cache_url) else {}
    for row in manifest:
        if row["window_id"] not in cache:
            y, sr = sf.read(io.BytesIO(files.read_bytes(files.join(release, row["singing_path"]))), dtype="float32")
            cache[row["window_id"]] = singing_stats(y, sr)
    files.write_json_atomic(cache_url, {r["window_id"]: cache[r["window_id"]] for r in manifest})

    shares = {key: dict(Counter(r[key] for r in manifest)) for key in
              ("song_category", "subject_level", "subject_gender", "song_language")}
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (key, counts) in zip(axes, shares.items(), strict=True):
        if counts:
            ax.pie(list(counts.values()), labels=list(counts.keys()), autopct="%1.0f%%")
        ax.set_title(key.replace("_", " "))
    _save(fig, files.join(release, "stats", "shares.png"))

    dominant = np.array([cache[r["window_id"]]["dominant_hz"] for r in manifest], dtype=float)
    bpm = np.array([cache[r["window_id"]]["bpm"] for r in manifest], dtype=float)
    for name, values, label in (("dominant_frequency", dominant, "dominant frequency (Hz)"), ("bpm", bpm, "BPM")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(values[np.isfinite(values)], bins=30)
        ax.set_xlabel(label)
        ax.set_ylabel("windows")
        _save(fig, files.join(release, "stats", f"{name}.png"))

    chroma_by_cat: dict[str, list] = defaultdict(list)
    for r in manifest:
        chroma_by_cat[r["song_category"]].append(cache[r["window_id"]]["chroma"])
    fig, ax = plt.subplots(figsize=(8, 1 + 0.5 * max(len(chroma_by_cat), 1)))
    cats = sorted(chroma_by_cat)
    if cats:
        ax.imshow(np.array([np.mean(chroma_by_cat[c], axis=0) for c in cats]), aspect="auto", cmap="magma")
        ax.set_yticks(range(len(cats)), cats)
        ax.set_xticks(range(12), ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"])
    ax.set_title("mean chroma of the singing, per category")
    _save(fig, files.join(release, "stats", "chroma.png"))

    mouth = []
    for shard in sorted({r["shard_path"] for r in manifest}):
        table = pq.read_table(io.BytesIO(files.read_bytes(files.join(release, shard))), columns=["mouth_opening"])
        mouth.append(store.arrays(table, ["mouth_opening"])["mouth_opening"].reshape(-1))
    mouth_all = np.concatenate(mouth) if mouth else np.zeros(0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(mouth_all[np.isfinite(mouth_all)], bins=40)
    ax.set_xlabel("mouth opening (inner-lip gap / inter-ocular distance)")
    ax.set_ylabel("frames")
    _save(fig, files.join(release, "stats", "mouth_opening.png"))

    sequences = Counter((r["session_id"], r["take_id"], r["segment_index"]) for r in manifest)
    durations = np.array([n * R.WINDOW_FRAMES / 30 for n in sequences.values()])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(durations, bins=20)
    ax.set_xlabel("released sequence duration (s)")
    ax.set_ylabel("sequences")
    _save(fig, files.join(release, "stats", "durations.png"))

    def summary(x):
        x = x[np.isfinite(x)]
        return {"median": float(np.median(x)), "p5": float(np.percentile(x, 5)),
                "p95": float(np.percentile(x, 95))} if len(x) else None

    result = {"windows": len(manifest), "shares": shares, "dominant_hz": summary(dominant), "bpm": summary(bpm),
              "mouth_opening": summary(mouth_all), "sequence_durations_s": summary(durations),
              "plots": [f"stats/{n}.png" for n in ("shares", "dominant_frequency", "bpm", "chroma",
                                                   "mouth_opening", "durations")]}
    files.write_json_atomic(files.join(release, "stats", "stats.json"), result)
    return result
