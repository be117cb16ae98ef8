"""Per-take audio: separation, synchronisation and the per-segment singing audio and BGM.

For each take: the song is separated (cached per song), the dry vocal's song offset and the
mic-vs-video offset are measured (tasks.audio_sync, the latter from the crop step's dense
landmarks of every portrait frame), and each portrait segment gets its dry vocal and BGM cut sample-accurately
from its source timestamps, written as 16 kHz mono float WAV.

Every offset ends `measured` (a confident estimate; it replaces the capture log's value when they
disagree by more than one video frame, flagged) or `unverified` (no confident estimate: the log's
value is used and the take is flagged, and the flag reaches the QA page and every window's
`qa_flags` in the release manifest, so training can filter it).
"""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from prefect import task
from scipy import signal

from singinghead.capture_rigs.audio_files import read_audio
from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.errors import AssetError
from singinghead.schemas.manifest import Take
from singinghead.schemas.settings import get_settings
from singinghead.storage import files
from singinghead.storage.catalog import Catalog, cache_key
from singinghead.tasks import audio_sync, syncnet, vocal_removal

STEP = "audio"
VERSION = "4"  # 2: every offset measured (confident) or unverified; 3: SyncNet when its weights are set;
# 4: the dense landmarks are the crop step's
RELEASE_SR = 16_000
FRAME_S = 1.0 / 30.0
SILENT_DBFS = -50.0
CLIP_LEVEL = 0.999


def to_16k_mono(x: np.ndarray, sr: int, n_out: int) -> np.ndarray:
    """Polyphase resampling to 16 kHz (exact rational ratio, linear phase: no time shift),
    trimmed or zero-padded to exactly `n_out` samples."""
    mono = x.mean(axis=1) if x.ndim == 2 else x
    ratio = Fraction(RELEASE_SR, sr).limit_denominator(1000)
    y = signal.resample_poly(mono, ratio.numerator, ratio.denominator).astype(np.float32)
    return np.pad(y[:n_out], (0, max(0, n_out - len(y))))


def cut(x: np.ndarray, sr: int, start_s: float, duration_s: float) -> tuple[np.ndarray, float]:
    """Samples [start, start + duration) at `sr`, zero-padded outside the recording.

    Returns the cut and the share of it that had to be padded.
    """
    a = int(round(start_s * sr))
    n = int(round(duration_s * sr))
    out = np.zeros((n,) + x.shape[1:], dtype=np.float32)
    lo, hi = max(a, 0), min(a + n, len(x))
    if hi > lo:
        out[lo - a: hi - a] = x[lo:hi]
    return out, 1.0 - max(hi - lo, 0) / max(n, 1)


def level_report(original: np.ndarray, release: np.ndarray) -> dict:
    """Levels of a cut: clipping on the original samples; RMS, peak and the share of silent
    20 ms frames on the 16 kHz release audio."""
    frames = release[: len(release) // 320 * 320].reshape(-1, 320)
    frame_db = 20 * np.log10(np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)) + 1e-12)
    rms = float(np.sqrt(np.mean(np.square(release, dtype=np.float64)))) if len(release) else 0.0
    report = {
        "rms_dbfs": float(20 * np.log10(rms + 1e-12)),
        "peak_dbfs": float(20 * np.log10(float(np.abs(release).max(initial=0.0)) + 1e-12)),
        "clipped_ratio": float((np.abs(original) >= CLIP_LEVEL).mean()) if original.size else 0.0,
        "silence_ratio": float((frame_db < SILENT_DBFS).mean()) if len(frame_db) else 1.0,
    }
    report["flags"] = [f for f, bad in (("silent", report["silence_ratio"] > 0.9),
                                        ("clipped", report["clipped_ratio"] > 1e-3)) if bad]
    return report


def choose(log_s: float, est: audio_sync.OffsetEstimate) -> tuple[float, bool, str]:
    """(offset to use, disagrees?, status): a confident measurement is `measured` (it replaces the
    log when they disagree by more than a frame); anything else is `unverified` and the log is used."""
    if not est.confident:
        return log_s, False, "unverified"
    disagree = abs(est.offset_s - log_s) > FRAME_S
    return (est.offset_s if disagree else log_s), disagree, "measured"


def audio_for_take(session_dir: str, session_id: str, take: Take, song_sha256: str, mic_sha256: str,
                   first_pts_s: float, crop_refs: list[ArtifactRef], out: str, backend: str | None = None
                   ) -> list[ArtifactRef]:
    root = Path(session_dir)
    catalog = Catalog(out)
    table_ref = next(r for r in crop_refs if r.meta.get("kind") == "segments")
    params, inputs = _catalog_identity(take, song_sha256, mic_sha256, crop_refs, backend)
    ident = params["separation"]
    done = catalog.lookup(STEP, VERSION, params, inputs)
    if done is not None:
        return done.outputs
    key = cache_key(STEP, VERSION, params, inputs)
    out_dir = files.join(out, "sessions", session_id, "takes", take.id, STEP, key[:16])

    vocals_ref, accomp_ref = vocal_removal.separate_cached(root / take.song.file, song_sha256, out, ident["backend"])
    with files.local_path(vocals_ref.url) as vocals_path, files.local_path(accomp_ref.url) as accomp_path:
        song_vocals, song_sr = read_audio(vocals_path, mono=True)
        accomp, _ = read_audio(accomp_path)
    mic, mic_sr = read_audio(root / take.mic, mono=True)

    song_est = audio_sync.song_offset(mic, mic_sr, song_vocals, song_sr)
    mic_to_song, song_flag, song_src = choose(take.mic_to_song_s, song_est)

    rows = files.read_parquet(table_ref.url).to_pylist()
    crop_dir = table_ref.url.rsplit("/", 1)[0]
    dense = _dense_landmarks(crop_refs)
    refs: list[ArtifactRef] = []
    mouths, faces = [], []
    for row in rows:
        times = np.asarray(row["timestamps_s"]) - first_pts_s
        with np.load(io.BytesIO(files.read_bytes(dense[row["segment_index"]].url))) as d:
            mouths.append((times, d["mouth_opening"]))
            faces.append((files.join(crop_dir, row["video"]), times, d["landmarks"].astype(np.float64)))
    if params["syncer"]["method"] == "syncnet":
        model = syncnet.load_syncnet(get_settings().syncnet_weights)
        with contextlib.ExitStack() as stack:
            local = [(stack.enter_context(files.local_path(v)), t, lmk) for v, t, lmk in faces]
            video_est = syncnet.syncnet_video_offset(model, local, mic, mic_sr, take.video_to_mic_s)
    else:
        video_est = audio_sync.video_offset(mouths, mic, mic_sr, take.video_to_mic_s)
    video_to_mic, video_flag, video_src = choose(take.video_to_mic_s, video_est)

    segments = []
    for row in rows:
        # Placed by the device timestamps: the cut starts where the segment's first frame was
        # captured; segments never span a frame drop (crop), so its frames are n_frames periods.
        start_video = row["t_start_s"] - first_pts_s
        duration = row["n_frames"] * FRAME_S
        mic_cut, mic_pad = cut(mic, mic_sr, start_video + video_to_mic, duration)
        bgm_cut, bgm_pad = cut(accomp, song_sr, start_video + video_to_mic + mic_to_song, duration)
        stem = row["video"].removesuffix(".mp4")
        n16 = int(round(duration * RELEASE_SR))
        mic16, bgm16 = to_16k_mono(mic_cut, mic_sr, n16), to_16k_mono(bgm_cut, song_sr, n16)
        seg = {"segment_index": row["segment_index"], "video": row["video"],
               "singing": level_report(mic_cut, mic16), "bgm": level_report(bgm_cut, bgm16),
               "padded_ratio": {"singing": mic_pad, "bgm": bgm_pad}}
        for name, data in ((f"{stem}.wav", mic16), (f"{stem}_bgm.wav", bgm16)):
            url = files.join(out_dir, name)
            with files.atomic_output(url) as tmp:
                sf.write(tmp, data, RELEASE_SR, subtype="FLOAT", format="WAV")
            refs.append(files.artifact_ref(url, kind="bgm" if name.endswith("_bgm.wav") else "singing",
                                           segment_index=row["segment_index"]))
        segments.append(seg)

    def offset_report(name: str, est: audio_sync.OffsetEstimate, log_s: float, used: float, disagree: bool,
                      status: str) -> tuple[dict, list[str]]:
        flags = []
        if status == "unverified":
            flags.append(f"{name} offset unverified (weak evidence: {est.evidence()}); the capture log's "
                         f"{log_s:.3f} s is used")
        elif disagree:
            flags.append(f"{name} offset disagrees with the capture log: measured {est.offset_s:.3f} s, "
                         f"log {log_s:.3f} s")
        return ({**est.as_dict(), "log_s": log_s, "used_s": used, "status": status,
                 "source": "measured" if disagree else "capture log", "flagged": bool(flags)}, flags)

    song_report, song_flags = offset_report("song", song_est, take.mic_to_song_s, mic_to_song, song_flag, song_src)
    video_report, video_flags = offset_report("video", video_est, take.video_to_mic_s, video_to_mic, video_flag,
                                              video_src)
    report = {
        "take_id": take.id,
        "song_offset": song_report,
        "video_offset": video_report,
        "separation": {**ident, "vocals": vocals_ref.url, "accompaniment": accomp_ref.url},
        "segments": segments,
        "flags": song_flags + video_flags
        + sorted({f"segment {s['segment_index']}: singing {f}" for s in segments for f in s["singing"]["flags"]}),
    }
    rep = files.write_json_atomic(files.join(out_dir, "audio_report.json"), report)
    rep.meta = {"kind": "audio_report"}
    refs.append(rep)
    catalog.record(STEP, VERSION, params, inputs, refs, meta={"session_id": session_id, "take_id": take.id})
    return refs


def _dense_landmarks(crop_refs: list[ArtifactRef]) -> dict[int, ArtifactRef]:
    """The crop step's dense landmarks of each segment, by segment index."""
    return {r.meta["segment_index"]: r for r in crop_refs if r.meta.get("kind") == "dense_landmarks"}


def _catalog_identity(take: Take, song_sha256: str, mic_sha256: str, crop_refs: list[ArtifactRef],
                      backend: str | None) -> tuple[dict, dict]:
    """(params, inputs) that key the audio step of a take in the catalog."""
    table_ref = next(r for r in crop_refs if r.meta.get("kind") == "segments")
    inputs = {"song": song_sha256, "mic": mic_sha256, "segments": table_ref.sha256,
              **{f"landmarks_{i:03d}": r.sha256 for i, r in sorted(_dense_landmarks(crop_refs).items())},
              "capture_log": json.dumps(take.capture_log.model_dump(), sort_keys=True)}
    return {"separation": vocal_removal.backend_id(backend), "syncer": syncer_id(), "release_sr": RELEASE_SR}, inputs


def syncer_id() -> dict:
    """The audio–visual syncer in use: SyncNet when its weights are set, else the envelope heuristic."""
    weights = get_settings().syncnet_weights
    if weights is None:
        return {"method": "envelope"}
    if not Path(weights).is_file():
        raise AssetError(f"SINGINGHEAD_SYNCNET_WEIGHTS={weights}: no such file")
    return syncnet.weights_id(weights)


def done_outputs(out: str, take: Take, song_sha256: str, mic_sha256: str, crop_refs: list[ArtifactRef],
                 backend: str | None = None) -> list[ArtifactRef] | None:
    params, inputs = _catalog_identity(take, song_sha256, mic_sha256, crop_refs, backend)
    done = Catalog(out).lookup(STEP, VERSION, params, inputs)
    return done.outputs if done is not None else None


@task(name="audio-take", task_run_name="audio-{take.id}", retries=1, retry_delay_seconds=2)
def audio_take_task(session_dir: str, session_id: str, take: Take, song_sha256: str, mic_sha256: str,
                    first_pts_s: float, crop_refs: list[ArtifactRef], out: str) -> list[ArtifactRef]:
    return audio_for_take(session_dir, session_id, take, song_sha256, mic_sha256, first_pts_s, crop_refs, out)


def read_report(refs: list[ArtifactRef]) -> dict:
    return files.read_json(next(r for r in refs if r.meta.get("kind") == "audio_report").url)
