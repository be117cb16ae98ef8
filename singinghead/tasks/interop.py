"""The public SingingHead layout (SPEC §2.10): export a release to it, import it into a release.

Layout: `train.txt`, `val.txt`, `test.txt` (one name per line), `video_seqs/<name>.mp4`,
`flame_seqs/<name>.pkl`, `audio_seqs/<name>.wav`, `bgm_seqs/<name>_bgm.wav`, with names
`id<subject>_<song>_<sequence>_<window>` (e.g. `id0_10_0_0`). Our pkl is a dict: `flame`
(T, 59) float32 in the SPEC §2.8 layout, `shape` (100,) float32, `fps` 30; the import also
accepts a bare (T, 59) array or split keys (`exp`/`expression`, `global_pose`, `neck_pose`,
`jaw_pose`). Pickles are read with the restricted unpickler (numpy only). Export also writes
`name_map.csv` (name → our window id), which the layout ignores.
"""

from __future__ import annotations

import csv
import io
import pickle
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
from scipy import signal

from singinghead.features.audio import bgm_mfcc_per_frame
from singinghead.flame.io import safe_load_pickle
from singinghead.schemas import motion as layout
from singinghead.schemas import release as R
from singinghead.schemas.errors import InputError, SingingHeadError
from singinghead.storage import files
from singinghead.storage import release as store
from singinghead.tasks.windows import cut_video

NAME = re.compile(r"^id(\d+)_(\d+)_(\d+)_(\d+)$")


def layout_names(manifest: list[dict]) -> dict[str, str]:
    """window id → SingingHead name: subjects numbered in id order, songs (takes) per subject in
    (session, take) order, sequences = segment index, windows = window index."""
    subjects = {s: i for i, s in enumerate(sorted({r["subject_id"] for r in manifest}))}
    songs: dict[str, dict[tuple[str, str], int]] = {}
    for s in subjects:
        takes = sorted({(r["session_id"], r["take_id"]) for r in manifest if r["subject_id"] == s})
        songs[s] = {t: i for i, t in enumerate(takes)}
    return {r["window_id"]: f"id{subjects[r['subject_id']]}_{songs[r['subject_id']][(r['session_id'], r['take_id'])]}"
                            f"_{r['segment_index']}_{r['window_index']}" for r in manifest}


def export_singinghead(release: str, out: str | Path) -> dict:
    out = Path(out)
    manifest = store.read_manifest(release).to_pylist()
    names = layout_names(manifest)
    for sub in ("video_seqs", "flame_seqs", "audio_seqs", "bgm_seqs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    by_shard: dict[str, list[dict]] = {}
    for r in manifest:
        by_shard.setdefault(r["shard_path"], []).append(r)
    for shard, rows in sorted(by_shard.items()):
        table = pq.read_table(io.BytesIO(files.read_bytes(files.join(release, shard))), columns=["motion", "shape"])
        a = store.arrays(table, ["motion", "shape"])
        for r in rows:
            name = names[r["window_id"]]
            with open(out / "flame_seqs" / f"{name}.pkl", "wb") as fh:
                pickle.dump({"flame": a["motion"][r["shard_row"]], "shape": a["shape"][r["shard_row"]],
                             "fps": layout.FPS}, fh, protocol=4)
            for role, target in (("video", f"video_seqs/{name}.mp4"), ("singing", f"audio_seqs/{name}.wav"),
                                 ("bgm", f"bgm_seqs/{name}_bgm.wav")):
                (out / target).write_bytes(files.read_bytes(files.join(release, r[f"{role}_path"])))
    for split in R.SPLITS:
        listed = sorted(names[r["window_id"]] for r in manifest if r["split"] == split)
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in listed))
    with open(out / "name_map.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "window_id"])
        w.writerows(sorted((n, wid) for wid, n in names.items()))
    return {"out": str(out), "windows": len(manifest)}


def _motion_from_pickle(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    obj = safe_load_pickle(path)
    shape = None
    if isinstance(obj, dict):
        shape = obj.get("shape", obj.get("betas"))
        if "flame" in obj:
            motion = np.asarray(obj["flame"])
        else:
            try:
                exp = np.asarray(obj.get("exp", obj.get("expression")))[:, :50]
                motion = np.concatenate([exp, np.asarray(obj["global_pose"]), np.asarray(obj["neck_pose"]),
                                         np.asarray(obj["jaw_pose"])], axis=1)
            except (KeyError, TypeError, IndexError, ValueError):
                raise InputError(path, f"no `flame` (T, 59) array and no exp/global_pose/neck_pose/jaw_pose keys "
                                       f"(keys: {sorted(obj)})") from None
    else:
        motion = np.asarray(obj)
    if motion.ndim != 2 or motion.shape[1] != layout.MOTION_DIM:
        raise InputError(path, f"motion has shape {motion.shape}, expected (T, {layout.MOTION_DIM})")
    if not np.isfinite(motion).all():
        raise InputError(path, "motion contains NaN or infinite values")
    if shape is not None:
        shape = np.asarray(shape, dtype=np.float32).reshape(-1)[: layout.SHAPE_DIM]
        shape = np.pad(shape, (0, layout.SHAPE_DIM - len(shape)))
    return motion.astype(np.float32), shape


def _audio_16k(path: Path, n: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "missing")
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if sr != R.SAMPLE_RATE:
        ratio = Fraction(R.SAMPLE_RATE, sr).limit_denominator(1000)
        mono = signal.resample_poly(mono, ratio.numerator, ratio.denominator).astype(np.float32)
    return np.pad(mono[:n], (0, max(0, n - len(mono))))


def import_singinghead(src: str | Path, release: str, version: str = "imported", shard_mb: float = 256.0) -> dict:
    """Read a SingingHead-layout folder into a new release (shards, manifest, card). Each name
    becomes one window per full 240 frames of its motion, with the matching 240 frames of its
    video (cut when the sequence holds several windows); its split is the layout's."""
    src = Path(src)
    if files.exists(files.join(release, store.MANIFEST)):
        raise InputError(Path(str(release)), "already holds a release; import into an empty folder")
    writers = {s: store.ShardWriter(release, s, 0, shard_mb) for s in R.SPLITS}
    problems = []
    for split in R.SPLITS:
        listing = src / f"{split}.txt"
        names = [n.strip() for n in listing.read_text().splitlines() if n.strip()] if listing.is_file() else []
        for name in names:
            m = NAME.match(name)
            if not m:
                problems.append(f"{listing}: {name!r} is not a SingingHead name (id<subject>_<song>_<seq>_<window>)")
                continue
            subject, song, seq, window = (int(x) for x in m.groups())
            try:
                motion, shape = _motion_from_pickle(src / "flame_seqs" / f"{name}.pkl")
                n_win = len(motion) // R.WINDOW_FRAMES
                if n_win == 0:
                    raise InputError(src / "flame_seqs" / f"{name}.pkl", f"{len(motion)} frames, fewer than 240")
                singing = _audio_16k(src / "audio_seqs" / f"{name}.wav", n_win * R.WINDOW_SAMPLES)
                bgm = _audio_16k(src / "bgm_seqs" / f"{name}_bgm.wav", n_win * R.WINDOW_SAMPLES)
                video = src / "video_seqs" / f"{name}.mp4"
                if not video.is_file():
                    raise InputError(video, "missing")
            except (InputError, pickle.UnpicklingError) as exc:
                problems.append(str(exc))
                continue
            for k in range(n_win):
                wid = name if n_win == 1 else f"{name}_{k}"
                a, b = k * R.WINDOW_FRAMES, (k + 1) * R.WINDOW_FRAMES
                sa, sb = k * R.WINDOW_SAMPLES, (k + 1) * R.WINDOW_SAMPLES
                media = {"video": f"media/{wid}.mp4", "singing": f"media/{wid}.wav", "bgm": f"media/{wid}_bgm.wav"}
                if n_win == 1:  # the layout's own window video
                    files.write_bytes_atomic(files.join(release, media["video"]), video.read_bytes())
                else:  # a longer sequence: each window gets its own frames [240k, 240k + 240)
                    try:
                        with files.atomic_output(files.join(release, media["video"])) as tmp:
                            cut_video(str(video), a, tmp)
                    except SingingHeadError as exc:
                        problems.append(f"{video}: window {k}: {exc}")
                        continue
                for role, data in (("singing", singing[sa:sb]), ("bgm", bgm[sa:sb])):
                    with files.atomic_output(files.join(release, media[role])) as tmp:
                        sf.write(tmp, data, R.SAMPLE_RATE, subtype="FLOAT", format="WAV")
                nan = {n: np.full(int(np.prod(shp)), np.nan, np.float32) for n, shp in R.WINDOW_ARRAYS.items()}
                row = {
                    "window_id": wid, "split": split, "subject_id": f"id{subject}", "subject_level": "unknown",
                    "subject_gender": "unknown", "session_id": "singinghead", "take_id": f"id{subject}_{song}",
                    "segment_index": seq, "window_index": window if n_win == 1 else k, "start_frame": a,
                    "song_title": f"song {song}", "song_category": "unknown", "song_language": "unknown",
                    **nan, "motion": motion[a:b].reshape(-1),
                    "shape": shape if shape is not None else np.zeros(layout.SHAPE_DIM, np.float32),
                    "bgm_mfcc": bgm_mfcc_per_frame(bgm[sa:sb], R.WINDOW_FRAMES).reshape(-1),
                    "video_to_mic_s": float("nan"), "mic_to_song_s": float("nan"), "sync_status": "unknown",
                    "qa_flags": ["imported: no landmarks, camera or sync information"]
                    + ([] if shape is not None else ["imported: no shape"]),
                    "_media": {role: {"path": p, **dict(zip(("sha256", "size"),
                                                           files.sha256_file(files.join(release, p)), strict=True))}
                               for role, p in media.items()},
                }
                writers[split].add(row, singing[sa:sb], bgm[sa:sb])
    for w in writers.values():
        w.flush()
    manifest = [r for s in R.SPLITS for r in writers[s].manifest_rows]
    store.write_manifest(release, manifest)
    info = {"version": version, "seed": None, "split_by": "imported", "ratios": list(R.SPLIT_RATIOS),
            "builds": [{"build": 0, "version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "sources": [str(src)], "windows_added": len(manifest)}],
            "counts": {s: sum(r["split"] == s for r in manifest) for s in R.SPLITS}, "import_problems": problems}
    files.write_json_atomic(files.join(release, "release.json"), info)
    files.write_bytes_atomic(files.join(release, "dataset_card.md"), store.dataset_card(manifest, info).encode())
    return {"release": release, "windows": len(manifest), "counts": info["counts"], "problems": problems}
