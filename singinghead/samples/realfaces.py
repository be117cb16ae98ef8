"""Capture-like takes of real faces with truth that no tracker produced.

A real talking clip (`../shared/data/talking_face/clipN.mp4` or any video with a face and its
in-sync sound) is played forward, backward and forward again (speech reversed with its lips stays
in sync; the take gets long enough for a crop cut and two segments) and every clip frame is
moved over the 3840×2160 canvas by a known affine: sway, roll up to ±15°, zoom 0.8–1.3 and a
sideways lean of 600 px that pushes the face out of any fixed crop. The truth of a canvas frame
is a detection (dlib's HOG detector + 68-point predictor) on the *unmoved* clip frame mapped
through that frame's affine, so a tracker that drifts with the motion cannot agree with it. The clip's sound,
shifted by a known video→mic offset, is the dry vocal; the "song" is that vocal over the sample
accompaniment at a known offset; the capture log may state the offset right or wrong.

Written like the sample session (`kinect.mkv` MJPEG Matroska with K4A tags and calibration,
`mic.wav`, `songs/`, `session.yaml`), with `ground_truth/ground_truth.json` and
`ground_truth/take01_frames.npz` (`time_s`, `clip_time_s`, `affine` (N, 2, 3) clip px → canvas
px, `landmarks` (N, 68, 2) canvas px, NaN where the unmoved clip frame had no face).
Deterministic for a clip, seed and offsets.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf

from singinghead.samples import audio, video
from singinghead.schemas.errors import InputError
from singinghead.schemas.manifest import CaptureLog, SessionManifest, Song, Subject, Take, write_manifest
from singinghead.storage.assets import dlib_landmark_model, ffmpeg_exe

MIC_SR, SONG_SR = 48_000, 44_100
FACE_WIDTH_PX = 380.0  # canvas face width at zoom 1 (a singer about 1.2 m from a 4K Kinect)
MIC_TO_SONG_S = 1.25


def _read_clip(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (RGB) and their presentation times (s) of a clip; variable frame rates stay exact."""
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time))
    except (av.error.FFmpegError, IndexError) as exc:
        raise InputError(f"{path}: not a readable video with a picture track ({exc})") from None
    if not frames:
        raise InputError(f"{path}: no video frames")
    times = np.asarray(times) - times[0]
    return frames, times


def _read_sound(path: Path, sr: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "sound.wav"
        done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn", "-ac", "1",
                               "-ar", str(sr), "-c:a", "pcm_f32le", str(wav)], capture_output=True)
        if done.returncode != 0 or not wav.is_file():
            raise InputError(f"{path}: no readable sound track ({done.stderr.decode(errors='replace').strip()})")
        return sf.read(wav, dtype="float32")[0]


def ping_pong(t: np.ndarray, length: float) -> np.ndarray:
    """Clip time of take time t: forward, backward, forward, …"""
    k, r = np.divmod(t, length)
    return np.where(k.astype(int) % 2 == 0, r, length - r)


def canvas_affines(n: int, clip_size: tuple[int, int], face_width: float, lean_at_s: float,
                   rng: np.random.Generator) -> np.ndarray:
    """(n, 2, 3) clip px → canvas px: sway, roll (±15°), zoom (0.8–1.3) and one sideways lean."""
    t = np.arange(n) / video.FPS
    ph = rng.uniform(0, 2 * np.pi, 6)
    roll = 15.0 * np.sin(2 * np.pi * 0.11 * t + ph[0]) * np.clip(t / 2.0, 0, 1)
    zoom = 1.05 + 0.25 * np.sin(2 * np.pi * 0.07 * t + ph[1])  # 0.8 … 1.3
    x = 1700 + 80 * np.sin(2 * np.pi * 0.17 * t + ph[2]) + 30 * np.sin(2 * np.pi * 0.53 * t + ph[3])
    y = 1000 + 40 * np.sin(2 * np.pi * 0.23 * t + ph[4])
    s = np.clip((t - lean_at_s) / 0.5, 0.0, 1.0)
    x = x + 600.0 * s * s * (3 - 2 * s)
    base = FACE_WIDTH_PX / face_width
    centre = np.array([clip_size[0] / 2, clip_size[1] / 2])
    out = np.empty((n, 2, 3))
    for i in range(n):
        m = cv2.getRotationMatrix2D(tuple(centre), float(roll[i]), float(base * zoom[i]))
        m[:, 2] += np.array([x[i], y[i]]) - centre
        out[i] = m
    return out


def _clip_landmarks(frames: list[np.ndarray]) -> np.ndarray:
    """(F, 68, 2) dlib's own detector and 68-point predictor on every unmoved clip frame (NaN
    without a face): the box convention the predictor was trained on, and none of the pipeline's
    code, so the truth does not share the tracker's assumptions."""
    import dlib

    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(dlib_landmark_model())
    out = np.full((len(frames), 68, 2), np.nan)
    for i, img in enumerate(frames):
        faces = detector(img, 0) or detector(img, 1)
        if faces:
            face = max(faces, key=lambda r: r.area())
            out[i] = [[p.x, p.y] for p in predictor(img, face).parts()]
    return out


def _mic(sound: np.ndarray, sound_length: float, take_s: float, video_to_mic: float, rng) -> np.ndarray:
    """Dry vocal at the mic: the clip's sound at video time u − video_to_mic, ping-ponged with the
    picture, and a faint noise floor."""
    n = int(round((take_s + max(video_to_mic, 0.0) + 0.5) * MIC_SR))
    u = np.arange(n) / MIC_SR - video_to_mic  # video time heard at each mic sample
    inside = (u >= 0) & (u < take_s)
    idx = np.clip(np.round(ping_pong(np.clip(u, 0, None), sound_length) * MIC_SR).astype(int), 0, len(sound) - 1)
    mic = np.where(inside, sound[idx], 0.0)
    return (mic + rng.normal(0, 3e-4, n)).astype(np.float32)


def build_realface_session(clip: str | Path, out: str | Path, video_to_mic: float = 0.3, log_video_to_mic: float |
                           None = None, seed: int = 0, passes: int = 3,
                           more_takes: Sequence[tuple[float, float]] = ()) -> Path:
    """A session from a real talking clip (see the module docstring): take01 with the given true
    video→mic offset and what its capture log says (default: the truth). `more_takes`: (true, logged)
    offsets of further takes (take02, …) that share take01's video and hear the clip's sound shifted
    by their own offset — the same faces, other known offsets."""
    clip, out = Path(clip), Path(out)
    frames, times = _read_clip(clip)
    sound = _read_sound(clip, MIC_SR)
    length = min(times[-1] + (times[-1] / max(len(times) - 1, 1)), len(sound) / MIC_SR)
    take_s = passes * length
    n = int(take_s * video.FPS)
    rng = np.random.default_rng(seed)
    clip_lmk = _clip_landmarks(frames)
    ok = np.isfinite(clip_lmk).all(axis=(1, 2))
    if ok.mean() < 0.5:
        raise InputError(f"{clip}: a face is found in only {ok.mean():.0%} of its frames")
    face_width = float(np.median(np.ptp(clip_lmk[ok, :, 0], axis=1)))
    affine = canvas_affines(n, (frames[0].shape[1], frames[0].shape[0]), face_width, 0.42 * take_s, rng)
    t = np.arange(n) / video.FPS
    clip_t = ping_pong(t, length)
    which = np.clip(np.searchsorted(times, clip_t + 1e-6, side="right") - 1, 0, len(frames) - 1)  # frame shown at t
    truth = np.einsum("nij,nkj->nki", affine[:, :, :2], clip_lmk[which]) + affine[:, None, :, 2]

    video_rel = "takes/take01/kinect.mkv"
    (out / "takes" / "take01").mkdir(parents=True, exist_ok=True)
    (out / "songs").mkdir(exist_ok=True)
    gt_dir = out / "ground_truth"
    gt_dir.mkdir(exist_ok=True)
    _write_mkv(out / video_rel, frames, which, affine, seed)
    name = clip.stem.replace(" ", "_")
    offsets = [(video_to_mic, video_to_mic if log_video_to_mic is None else log_video_to_mic), *more_takes]
    takes, gt_takes = [], {}
    for i, (true_v2m, logged) in enumerate(offsets, start=1):
        take_id = f"take{i:02d}"
        (out / "takes" / take_id).mkdir(parents=True, exist_ok=True)
        mic = _mic(sound, length, take_s, true_v2m, rng)
        sf.write(out / "takes" / take_id / "mic.wav", mic, MIC_SR, subtype="PCM_24")
        song_s = MIC_TO_SONG_S + len(mic) / MIC_SR + 1.0
        accomp = audio.accompaniment(song_s, SONG_SR, 100, audio.melody(song_s, 100, rng), rng).mean(axis=1)
        vocal = np.interp(np.arange(len(accomp)) / SONG_SR - MIC_TO_SONG_S, np.arange(len(mic)) / MIC_SR, mic,
                          left=0.0, right=0.0)
        accomp *= np.sqrt(np.mean(vocal**2) / max(np.mean(accomp**2), 1e-12))
        song = vocal + accomp
        sf.write(out / "songs" / f"{take_id}.flac", (0.9 * song / np.abs(song).max()).astype(np.float32), SONG_SR,
                 subtype="PCM_24")
        takes.append(Take(id=take_id, video=video_rel, mic=f"takes/{take_id}/mic.wav",
                          song=Song(file=f"songs/{take_id}.flac", title=f"{name} (spoken)",
                                    category="theater_and_drama", language="english"),
                          capture_log=CaptureLog(video_start_s=logged, mic_start_s=0.0,
                                                 song_start_s=-MIC_TO_SONG_S)))
        gt_takes[take_id] = {"offsets_s": {"video_to_mic": true_v2m, "mic_to_song": MIC_TO_SONG_S},
                             "log_offsets_s": {"video_to_mic": logged, "mic_to_song": MIC_TO_SONG_S},
                             "lean_s": 0.42 * take_s, "seconds": n / video.FPS,
                             "clip_frames_with_face": float(ok.mean())}
    manifest = SessionManifest(
        session_id=f"real-{name}", subject=Subject(id=f"real-{name}", level="amateur", gender="other"), takes=takes)
    write_manifest(manifest, out)
    np.savez_compressed(gt_dir / "take01_frames.npz", time_s=t, clip_time_s=clip_t, clip_frame=which, affine=affine,
                        landmarks=truth)
    calib = video.kinect_calibration()
    p = calib["CalibrationInformation"]["Cameras"][0]["Intrinsics"]["ModelParameters"]
    K = [[p[2] * 4096 * video.WIDTH / 4096, 0, video.WIDTH / 2 - 0.5],
         [0, p[3] * 3072 * video.WIDTH / 4096, video.HEIGHT / 2 - 0.5], [0, 0, 1]]
    (gt_dir / "ground_truth.json").write_text(json.dumps({
        "clip": clip.name, "seed": seed, "frames": n, "fps": video.FPS, "camera": {"K": K}, "takes": gt_takes,
    }, indent=2))
    return out


def _write_mkv(path: Path, frames: list[np.ndarray], which: np.ndarray, affine: np.ndarray, seed: int) -> None:
    """The moved clip frames over the studio wall, as Kinect MJPEG Matroska."""
    wall = video.background()

    def canvas():
        for i in range(len(which)):
            yield video.paste_warped(frames[which[i]], affine[i], wall.copy())

    video.encode_kinect_mkv(path, canvas(), 200_000_000, quality=90, track_uid=10**17 + seed * 7919 + 3)


# --- scoring a processed take against the truth ----------------------------------------------------

def _portrait(points: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """Canvas px → portrait px (the crop's pixel-centre convention, flame.camera.portrait_camera)."""
    return (points - [x0, y0] + 0.5) * (size / side) - 0.5


def score_take(out: str | Path, session_dir: str | Path, take_id: str = "take01") -> dict:
    """Per-frame landmark error (mean over the 68 points, in inter-ocular distances of the truth)
    of the released landmarks, reprojection error, outlier shares and kept seconds of a processed
    real-face take. A frame the pipeline left without landmarks counts as an infinite error."""
    import pyarrow.parquet as pq

    out, session_dir = Path(out), Path(session_dir)
    gt = np.load(session_dir / "ground_truth" / f"{take_id}_frames.npz")
    info = json.loads((session_dir / "ground_truth" / "ground_truth.json").read_text())["takes"][take_id]
    session_id = next(line.split(":", 1)[1].strip() for line in (session_dir / "session.yaml").read_text().splitlines()
                      if line.startswith("session_id:"))
    take_out = out / "sessions" / session_id / "takes" / take_id
    def newest(step: str) -> Path:  # an output folder may hold results of earlier step versions
        folders = sorted((take_out / step).glob("*/"), key=lambda p: p.stat().st_mtime)
        if not folders:
            raise FileNotFoundError(f"{take_out / step}: no results (was the take processed?)")
        return folders[-1]

    segments = {}
    for path in newest("crop").glob("segments.parquet"):
        for row in pq.read_table(path).to_pylist():
            segments[row["segment_index"]] = row
    errors, reproj, groups, outlier_any, kept_frames = [], [], {}, [], 0
    for path in sorted(newest("flame_sequence").glob("*_motion.parquet")):
        t = pq.read_table(path).to_pydict()
        seg = segments[t["segment_index"][0]]
        truth = _portrait(gt["landmarks"][np.asarray(t["source_frame"])], seg["crop_x0"], seg["crop_y0"],
                          seg["crop_side"], seg["output_size"])
        found = np.asarray(t["landmarks"], dtype=np.float64).reshape(-1, 68, 2)
        iod = np.linalg.norm(truth[:, 36:42].mean(1) - truth[:, 42:48].mean(1), axis=1)
        err = np.linalg.norm(found - truth, axis=2).mean(1) / iod
        err[~np.isfinite(err) & np.isfinite(iod)] = np.inf
        errors.append(err[np.isfinite(iod)])
        reproj.append(np.asarray(t["reprojection_error_px"], dtype=np.float64))
        for names in t["outliers"]:
            for g in names:
                groups[g] = groups.get(g, 0) + 1
        outlier_any.append(np.array([len(n) > 0 for n in t["outliers"]]))
        kept_frames += len(t["frame"])
    if not errors:
        raise FileNotFoundError(f"{take_out}: no motion tables (was the take processed?)")
    err, rep, any_out = np.concatenate(errors), np.concatenate(reproj), np.concatenate(outlier_any)
    finite_rep = rep[np.isfinite(rep)]
    face_seconds = float(np.isfinite(gt["landmarks"]).all(axis=(1, 2)).sum() / video.FPS)
    return {
        "frames": int(len(err)), "frames_without_landmarks": int(np.isinf(err).sum()), "segments": len(segments),
        "landmark_median_iod": float(np.median(err)), "landmark_p95_iod": float(np.percentile(err, 95)),
        "landmark_share_over_0.1_iod": float(np.mean(err > 0.1)),
        "reprojection_median_px": float(np.median(finite_rep)) if len(finite_rep) else float("nan"),
        "reprojection_p95_px": float(np.percentile(finite_rep, 95)) if len(finite_rep) else float("nan"),
        "outlier_share": float(any_out.mean()),
        "outlier_share_per_group": {g: n / len(any_out) for g, n in sorted(groups.items())},
        "seconds_kept": kept_frames / video.FPS, "seconds_with_face": face_seconds,
        "seconds_kept_share": kept_frames / video.FPS / face_seconds, "true_lean_s": info["lean_s"],
        "per_frame": {"landmark_iod": err, "reprojection_px": rep},  # for pooling over takes
    }
