"""Release windows (SPEC §2.9): every processed sequence cut into 8 s windows, remainder dropped.

A window takes frames [240k, 240k + 240) of a segment: its motion-table rows, the matching
16 kHz singing and BGM samples (exactly 128 000 from sample 128 000·k), the BGM's 64-d MFCC per
frame, the portrait frames re-encoded to an MP4 of its own, and QA flags. Splits are assigned
by a seeded hash of a key (the window, its sequence or its subject), so the same window always
lands in the same split, however many sessions are added later.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
from dataclasses import dataclass, field

import av
import numpy as np
import soundfile as sf

from singinghead.features.audio import bgm_mfcc_per_frame
from singinghead.features.face import frame_runs
from singinghead.schemas import release as R
from singinghead.schemas.errors import SingingHeadError
from singinghead.schemas.motion import SHAPE_SCAN
from singinghead.storage import files
from singinghead.storage.assets import ffmpeg_exe

SPLIT_KEYS = ("window", "sequence", "subject")
#: A window is flagged when its FLAME fit misses the detections by more than real faces need:
#: the real-face benchmark (bench/realfaces.py) reaches a median ≈ 4 px and a p95 < 10 px at 1024².
REPROJECTION_FLAG_MEDIAN_PX = 6.0
REPROJECTION_FLAG_P95_PX = 12.0
#: A run of this many consecutive frames over the p95 bound is a tracking failure (≥ 0.1 s of wrong
#: mouth shapes) however good the rest is: 7 such frames in 240 (seen on real clip1) move neither
#: the window's median nor its p95.
REPROJECTION_BURST_FRAMES = 3
OUTLIER_FLAG_SHARE = 0.1
LOW_CONFIDENCE = 0.5  # landmark confidence below which a frame counts as badly measured


def assign_split(key: str, seed: int = 0, ratios: tuple[float, float, float] = R.SPLIT_RATIOS) -> str:
    """train / val / test from a seeded SHA-256 of `key`: uniform, deterministic, order-free."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    edges = np.cumsum(ratios)
    return R.SPLITS[int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else R.SPLITS[-1]


def window_id(subject: str, session: str, take: str, segment: int, window: int) -> str:
    return f"{subject}_{session}_{take}_s{segment:03d}_w{window:03d}"


def split_key(split_by: str, wid: str, subject: str, session: str, take: str, segment: int) -> str:
    if split_by not in SPLIT_KEYS:
        raise ValueError(f"split_by must be one of {SPLIT_KEYS}, not {split_by!r}")
    return {"window": wid, "sequence": f"{subject}/{session}/{take}/{segment}", "subject": subject}[split_by]


@dataclass
class Window:
    row: dict  # WINDOW_SCHEMA fields, arrays as flat float32
    singing: np.ndarray  # (128000,) float32
    bgm: np.ndarray
    video_source: str  # the segment MP4
    video_start_s: float = 0.0  # the window's first frame in the segment MP4 (from the timestamps)
    files: dict[str, str] = field(default_factory=dict)  # role → release-relative path once written


def _read_wav(url: str) -> np.ndarray:
    data, sr = sf.read(io.BytesIO(files.read_bytes(url)), dtype="float32", always_2d=False)
    if sr != R.SAMPLE_RATE:
        raise SingingHeadError(f"{url}: {sr} Hz, the release audio is {R.SAMPLE_RATE} Hz")
    return data


def qa_flags(error: np.ndarray, confidence: np.ndarray, outliers: list[list[str]], audio_flags: list[str],
             sync_flags: list[str], shape_source: str = SHAPE_SCAN, shape_flags: list[str] | tuple = ()
             ) -> list[str]:
    flags = [f"sync: {f}" for f in sync_flags] + [f"audio: {f}" for f in audio_flags]
    finite = error[np.isfinite(error)]
    if len(finite) < len(error):
        flags.append(f"landmarks missing in {len(error) - len(finite)} frames")
    if len(finite) and np.median(finite) > REPROJECTION_FLAG_MEDIAN_PX:
        flags.append(f"reprojection median {np.median(finite):.1f} px > {REPROJECTION_FLAG_MEDIAN_PX:.0f}")
    if len(finite) and np.percentile(finite, 95) > REPROJECTION_FLAG_P95_PX:
        flags.append(f"reprojection p95 {np.percentile(finite, 95):.1f} px > {REPROJECTION_FLAG_P95_PX:.0f}")
    bursts = [(a, b) for a, b in frame_runs(np.nan_to_num(error) > REPROJECTION_FLAG_P95_PX)
              if b - a >= REPROJECTION_BURST_FRAMES]
    if bursts:
        a, b = max(bursts, key=lambda r: r[1] - r[0])
        more = f"; {len(bursts)} such runs" if len(bursts) > 1 else ""
        flags.append(f"reprojection > {REPROJECTION_FLAG_P95_PX:.0f} px in {b - a} consecutive frames "
                     f"(window frames {a}–{b - 1}){more}")
    share = float(np.mean([bool(o) for o in outliers]))
    if share > OUTLIER_FLAG_SHARE:
        flags.append(f"box-plot outliers in {share:.0%} of frames")
    low = float((confidence < LOW_CONFIDENCE).mean())
    if low > 0.1:
        flags.append(f"landmarks: low confidence in {low:.0%} of frames")
    if shape_source != SHAPE_SCAN:  # e.g. no light stage, or it failed: the weaker monocular shape
        flags.append(f"shape: {shape_source or 'of unknown source'}, no scan fit")
    return flags + [f"shape: {f}" for f in shape_flags]  # the scan fit's own (scan_fit.fit_flags)


def segment_windows(index: dict, take_id: str, segment: dict, seed: int = 0, split_by: str = "sequence",
                    skip: set[str] | frozenset = frozenset()) -> list[Window]:
    """The 8 s windows of one processed segment (a `processed.json` entry), except ids in `skip`."""
    subject, session = index["subject"], index["session_id"]
    take = index["takes"][take_id]
    table = files.read_parquet(segment["motion"])
    shape = np.asarray(json.loads(table.schema.metadata[b"shape"]), dtype=np.float32)
    shape_source = table.schema.metadata.get(b"shape_source", b"").decode()
    shape_flags = (index.get("subject_shape") or {}).get("flags", [])
    t = table.to_pydict()
    n = len(t["frame"]) // R.WINDOW_FRAMES
    if n == 0:
        return []
    singing, bgm = _read_wav(segment["singing"]), _read_wav(segment["bgm"])
    arrays = {k: np.asarray(t[k], dtype=np.float32) for k in
              ("motion", "translation", "landmarks", "landmark_confidence", "mouth_opening", "eye_closure",
               "reprojection_error_px")}
    # Placed by the device timestamps: window k's audio starts where its first frame was
    # captured. Segments never span a frame drop (crop), so this is 240 k frames of 1/30 s; a
    # window whose frames are not evenly spaced (a drop inside) would pair frames with the wrong
    # audio and is left out, loudly.
    ts = np.asarray(t["timestamp_s"], dtype=np.float64)
    period = (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else 1.0 / 30
    out = []
    for k in range(n):
        wid = window_id(subject["id"], session, take_id, segment["segment_index"], k)
        if wid in skip:
            continue
        a, b = k * R.WINDOW_FRAMES, (k + 1) * R.WINDOW_FRAMES
        if abs(ts[b - 1] - ts[a] - (R.WINDOW_FRAMES - 1) * period) > period / 2:
            logging.getLogger(__name__).warning("%s: frames %d–%d of %s are not evenly spaced (a frame drop): "
                                                "window left out", wid, a, b - 1, segment["motion"])
            continue
        sa = int(round((ts[a] - ts[0]) * R.SAMPLE_RATE))
        sb = sa + R.WINDOW_SAMPLES
        sing = np.pad(singing[sa:sb], (0, max(0, sb - len(singing))))
        music = np.pad(bgm[sa:sb], (0, max(0, sb - len(bgm))))
        row = {
            "window_id": wid,
            "split": assign_split(split_key(split_by, wid, subject["id"], session, take_id,
                                            segment["segment_index"]), seed),
            "subject_id": subject["id"], "subject_level": subject["level"], "subject_gender": subject["gender"],
            "session_id": session, "take_id": take_id, "segment_index": segment["segment_index"],
            "window_index": k, "start_frame": a,
            "song_title": take["song"]["title"], "song_category": take["song"]["category"],
            "song_language": take["song"]["language"],
            **{name: arr[a:b].reshape(-1) for name, arr in arrays.items()},
            "bgm_mfcc": bgm_mfcc_per_frame(music, R.WINDOW_FRAMES).reshape(-1),
            "shape": shape, "camera": np.asarray(t["camera"][a], dtype=np.float32),
            "video_to_mic_s": take["video_to_mic_s"], "mic_to_song_s": take["mic_to_song_s"],
            "sync_status": take.get("sync_status", "unknown"),
            "qa_flags": qa_flags(arrays["reprojection_error_px"][a:b], arrays["landmark_confidence"][a:b],
                                 t["outliers"][a:b], segment["audio_flags"], take["sync_flags"], shape_source,
                                 shape_flags),
        }
        out.append(Window(row, sing.astype(np.float32), music.astype(np.float32), segment["video"],
                          video_start_s=float(ts[a] - ts[0])))
    return out


def cut_video(segment_video: str, start_s: float, out_path: str, frames: int = R.WINDOW_FRAMES,
              fps: float = 30.0) -> None:
    """`frames` frames of a portrait MP4 from the one shown at `start_s` (seconds after its first
    frame), re-encoded (exact: input seek to a quarter frame before it, which ffmpeg decodes from
    the preceding keyframe)."""
    start_frame = int(round(start_s * fps))
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{max(start_s - 0.25 / fps, 0):.6f}",
           "-i", segment_video, "-map", "0:v:0", "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast",
           "-crf", "18", "-pix_fmt", "yuv420p", "-an", "-movflags", "+faststart", "-f", "mp4", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = start_frame + frames - 1
        raise SingingHeadError(f"{segment_video}: ffmpeg could not cut frames {start_frame}–{last}: "
                               f"{proc.stderr.strip()[-400:]}")
    with av.open(out_path) as c:
        got = sum(1 for pkt in c.demux(c.streams.video[0]) if pkt.size)
    if got != frames:
        raise SingingHeadError(f"{segment_video}: window at frame {start_frame} has {got} frames, expected {frames}")
