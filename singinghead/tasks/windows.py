"""Release windows (SPEC §2.9): every processed sequence cut into 8 s windows, remainder dropped.

A window takes frames [240k, 240k + 240) of a segment: its motion-table rows, the matching
16 kHz singing and BGM samples (exactly 128 000 from sample 128 000·k), the BGM's 64-d MFCC per
frame, the portrait frames as an MP4 of their own (the segment's own packets, copied: `cut_video`),
and QA flags. Splits are assigned by a seeded hash of a key (the window, its sequence or its
subject), so the same window always lands in the same split, however many sessions are added later.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction

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
        out.append(Window(row, sing.astype(np.float32), music.astype(np.float32), segment["video"]))
    return out


def _decode_order(video: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fraction]:
    """Per packet of the video stream, in the file's (decode) order: its frame's display index,
    whether it is a keyframe and its pts; and the stream's time base. Only demuxes (no decoding)."""
    with av.open(video) as c:
        stream = c.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in c.demux(stream) if p.size]
        time_base = stream.time_base
    if any(p is None for p, _ in packets):
        raise SingingHeadError(f"{video}: video packets without timestamps: frames cannot be told apart")
    pts = np.array([p for p, _ in packets], dtype=np.int64)
    return np.argsort(np.argsort(pts, kind="stable")), np.array([k for _, k in packets], bool), pts, time_base


def cut_video(segment_video: str, start_frame: int, out_path: str, frames: int = R.WINDOW_FRAMES) -> str:
    """Frames [start_frame, start_frame + frames) of a portrait MP4 as an MP4 of their own.

    When the first is a keyframe whose group closes within the window (in decode order the next
    `frames` packets are exactly these frames: the crop step forces a keyframe at every 240th
    frame), the packets are copied: the window holds the segment's own pictures, bit for bit, in
    milliseconds. Otherwise (a video from elsewhere) they are re-encoded at CRF 18 from an exact
    seek. Returns how: "copied" or "re-encoded"."""
    try:
        return _cut_video(segment_video, start_frame, out_path, frames)
    except av.FFmpegError as exc:
        raise SingingHeadError(f"{segment_video}: cannot cut frames {start_frame}–{start_frame + frames - 1}: "
                               f"{exc}") from exc


def _cut_video(segment_video: str, start_frame: int, out_path: str, frames: int) -> str:
    display, keyframe, pts, time_base = _decode_order(segment_video)
    last = start_frame + frames - 1
    if start_frame < 0 or last >= len(display):
        raise SingingHeadError(f"{segment_video}: frames {start_frame}–{last} asked for, the video has {len(display)}")
    first = int(np.flatnonzero(display == start_frame)[0])
    block = display[first:first + frames]
    if keyframe[first] and len(block) == frames and block.min() == start_frame and block.max() == last:
        _copy_packets(segment_video, int(pts[first]), frames, out_path)
        how = "copied"
    else:
        period = float(np.median(np.diff(np.sort(pts)))) if len(pts) > 1 else 1.0
        start_s = float((pts[first] - pts.min() - period / 4) * time_base)  # a quarter frame before it
        _reencode(segment_video, max(start_s, 0.0), frames, out_path, start_frame)
        how = "re-encoded"
    with av.open(out_path) as c:
        got = sum(1 for pkt in c.demux(c.streams.video[0]) if pkt.size)
    if got != frames:
        raise SingingHeadError(f"{segment_video}: window at frame {start_frame} has {got} frames, expected {frames}")
    return how


def _copy_packets(video: str, start_pts: int, frames: int, out_path: str) -> None:
    """`frames` packets from the keyframe at `start_pts` on, timestamps moved to start at 0."""
    with av.open(video) as src, av.open(out_path, "w", format="mp4", options={"movflags": "+faststart"}) as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        src.seek(start_pts, stream=stream, backward=True)
        copied = 0
        for packet in src.demux(stream):
            if not packet.size or (copied == 0 and packet.pts != start_pts):
                continue
            packet.pts -= start_pts
            packet.dts -= start_pts
            packet.stream = out
            dst.mux(packet)
            copied += 1
            if copied == frames:
                break


def _reencode(video: str, start_s: float, frames: int, out_path: str, start_frame: int) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{start_s:.6f}",
           "-i", video, "-map", "0:v:0", "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast",
           "-crf", "18", "-pix_fmt", "yuv420p", "-an", "-movflags", "+faststart", "-f", "mp4", out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SingingHeadError(f"{video}: ffmpeg could not cut frames {start_frame}–{start_frame + frames - 1}: "
                               f"{proc.stderr.strip()[-400:]}")
