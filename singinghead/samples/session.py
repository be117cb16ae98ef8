"""`singinghead sample-session OUT`: a complete small capture session with ground truth.

Deterministic from a seed, no network. Per take:
- `takes/<id>/kinect.mkv`: 3840×2160 30 fps MJPEG Matroska, K4A tags, calibration attachment,
  the astronaut photo moved by known head motion, jaw driven by the dry vocal's envelope;
- `takes/<id>/mic.wav`: the dry vocal, 48 kHz mono 24-bit, with a faint noise floor;
- `songs/<id>.flac`: the "original song" = another voice singing the same melody + accompaniment.
Per subject: `light_stage/photos/cam00..cam50.jpg` + `light_stage/calibration.json`, 51 views of
the stand-in FLAME head (ICT) with a known shape (samples.light_stage).

Timelines (see schemas.manifest): mic time t = song time t + mic_to_song; video time t = mic
time t + video_to_mic. The capture log in session.yaml states both; in take 2 the true
video→mic offset differs from the log by 100 ms (3 frames) so sync checks have something to
find. Everything true is written to `ground_truth/` (see its README.md).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from singinghead.capture_rigs.scan_files import HeadScan
from singinghead.flame.ict import write_model
from singinghead.flame.model import load_flame
from singinghead.samples import audio, video
from singinghead.samples import light_stage as light_stage_sample
from singinghead.schemas.manifest import (
    CaptureLog,
    LightStage,
    SessionManifest,
    Song,
    Subject,
    Take,
    write_manifest,
)

GENERATOR_VERSION = "10"  # 7: frame drops (ground truth `recorded`); 8: speckle in float32;
# 9: `centre_xy` in the colour track's pixels at every colour mode (it was 4K px); 10: MJPEG frames
# by libjpeg-turbo muxed by PyAV, portamento by a running mean (scipy)
MIC_SR, SONG_SR = 48_000, 44_100

#: Per take: song metadata, leans [(s, Δx px)], log offsets, and the log's error on video→mic.
TAKES = (
    {"id": "take01", "title": "Moon Harbour", "category": "folk", "language": "english",
     "bpm": 96, "leans": [(16.1, 520.0)], "mic_to_song": 1.5, "video_to_mic": 0.4, "log_error": 0.0},
    {"id": "take02", "title": "Iron Parade", "category": "march", "language": "english",
     "bpm": 112, "leans": [(6.5, -480.0), (13.5, 500.0)], "mic_to_song": 2.25, "video_to_mic": 0.35,
     "log_error": 0.1},
)

GROUND_TRUTH_README = """\
# Ground truth of the sample session

Everything here is known by construction (singinghead.samples); the pipeline never reads it.

`ground_truth.json`
- `camera`: colour intrinsics K (3×3, px) of the colour track (`video`: 3840×2160, or 1280×720 in
  the 720p mode); no distortion. Every pixel position here is in that track's pixels.
- `takes.<id>.offsets_s`: true `mic_to_song` (song time of mic sample 0) and `video_to_mic`
  (mic time of video frame 0); `log_offsets_s` is what the capture log in session.yaml says.
- `takes.<id>.cuts_s`: times of the sideways leans that move the face out of a fixed crop box.
- `takes.<id>.files`: the stems of the song (vocals and accompaniment, float WAV at the song's rate).

`<take>_frames.npz`, one row per video frame:
- `time_s` (N) video time; `affine` (N, 2, 3) source-photo px → canvas px;
- `centre_xy` (N, 2) canvas position of the face centre; `roll_deg` (N); `scale` (N);
- `jaw_px` (N) jaw drop in source px; `mouth_opening` (N) 0..1 (vocal envelope × vowel openness);
- `landmarks` (N, 68, 2) dlib-convention 68 points on the canvas; `face_box` (N, 4) x0, y0, x1, y1
  = bounds of those landmarks; `recorded` (N) False for frames the "device" dropped (they are
  not in the recording: its k-th frame is the k-th recorded one; `takes.<id>.dropped_frames`).

`ground_truth.json` → `light_stage`: `source` ("stand-in head" or "real scan"), the head's FLAME
`shape` (100, the packaged ICT head in FLAME's formats, neutral expression and pose; null for a
real scan, which no model represents exactly), `views`; `head_mesh.ply` is the photographed
surface in the rig's frame (metres) and `head_landmarks.npy` its 68 landmarks (dlib order).
"""


def _take_audio(spec: dict, duration_s: float, rng: np.random.Generator):
    mic_dur = duration_s + spec["video_to_mic"] + 0.6
    song_dur = spec["mic_to_song"] + mic_dur + 2.0
    notes = audio.melody(song_dur, spec["bpm"], rng)
    song_vocals, _ = audio.sing(notes, song_dur, SONG_SR, timbre_shift=0.93, rng=rng)
    accomp = audio.accompaniment(song_dur, SONG_SR, spec["bpm"], notes, rng)
    song_vocals_st = np.repeat(song_vocals[:, None], 2, axis=1) * 0.8
    shifted = [audio.Note(n.start_s - spec["mic_to_song"], n.dur_s, n.midi, n.vowel) for n in notes]
    shifted = [n for n in shifted if n.start_s + n.dur_s > 0]
    dry, mouth = audio.sing(shifted, mic_dur, MIC_SR, timbre_shift=1.08, timing_jitter_s=0.015, rng=rng)
    dry = dry + rng.normal(0, 3e-4, len(dry)).astype(np.float32)  # mic noise floor (≈ −70 dBFS)
    return song_vocals_st, accomp, dry, mouth


def _dropped_frames(n_frames: int, gaps: int, rng: np.random.Generator) -> np.ndarray:
    """Frame numbers of `gaps` separate drops of 1–3 frames, at least a second from either end
    and from each other."""
    if gaps == 0:
        return np.zeros(0, int)
    slots = np.arange(video.FPS, n_frames - 2 * video.FPS, 2 * video.FPS)  # one drop per 2 s slot at most
    if len(slots) < gaps:
        raise ValueError(f"{gaps} frame drops do not fit in {n_frames} frames")
    starts = np.sort(rng.choice(slots, gaps, replace=False)) + rng.integers(0, video.FPS // 2, gaps)
    return np.concatenate([np.arange(s, s + rng.integers(1, 4)) for s in starts])


def build_sample_session(
    out: str | Path, seed: int = 0, duration_s: float = 20.0, on_take: Callable[[str], None] | None = None,
    light_stage: bool = True, scan: HeadScan | None = None, n_takes: int = len(TAKES),
    color_mode: str = "2160P", frame_drops: int = 0, light_stage_photos: Collection[str] | None = None,
) -> Path:
    """Write the sample session into `out` (created) and return its path (without the light
    stage when `light_stage` is False, and with only the first `n_takes` takes: load tests queue
    many small sessions). With `scan` (a real textured scan, samples.real_scan) the light stage
    photographs that scan instead of the stand-in head with a known shape. `color_mode` "720P"
    records the same scene at 1280×720 (load tests: many sessions, few pixels). `frame_drops`
    gaps of 1–3 frames each (seeded) are left out of every take's recording, as a device that
    drops frames does; the ground truth says which frames were recorded."""
    width, height = video.COLOR_MODES[color_mode]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gt_dir = out / "ground_truth"
    gt_dir.mkdir(exist_ok=True)
    (out / "songs").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    n_frames = int(round(duration_s * video.FPS))
    takes, gt_takes = [], {}
    # The videos and the light stage are rendered two at a time (OpenCV, numpy and libjpeg work
    # outside the GIL); what draws from `rng` stays in order, so the session is the same.
    jobs = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        if light_stage:  # the longest job first
            with tempfile.TemporaryDirectory() as tmp:
                model = load_flame(write_model(tmp))
            true_shape = np.random.default_rng(seed + 1).normal(0.0, 1.0, 100)
            jobs["light stage"] = pool.submit(light_stage_sample.write_light_stage, out / "light_stage", model,
                                              true_shape, gt_dir, scan, light_stage_photos)
        for k, spec in enumerate(TAKES[:n_takes]):
            take_dir = out / "takes" / spec["id"]
            take_dir.mkdir(parents=True, exist_ok=True)
            song_vocals, accomp, dry, mouth = _take_audio(spec, duration_s, rng)

            # Mix like a record: the accompaniment as loud (RMS) as the voice, peaks below full scale.
            accomp = accomp * np.sqrt(np.mean(song_vocals**2) / np.mean(accomp**2))
            gain = 0.9 / np.abs(song_vocals + accomp).max()
            song_vocals, accomp = (song_vocals * gain).astype(np.float32), (accomp * gain).astype(np.float32)
            song = song_vocals + accomp
            sf.write(out / "songs" / f"{spec['id']}.flac", song, SONG_SR, subtype="PCM_24")
            sf.write(gt_dir / f"{spec['id']}_song_vocals.wav", song_vocals, SONG_SR, subtype="FLOAT")
            sf.write(gt_dir / f"{spec['id']}_song_accompaniment.wav", accomp, SONG_SR, subtype="FLOAT")
            sf.write(take_dir / "mic.wav", dry, MIC_SR, subtype="PCM_24")

            # Mouth opening at each frame's mic time, averaged over the frame's exposure.
            true_v2m = spec["video_to_mic"] + spec["log_error"]
            t_video = np.arange(n_frames) / video.FPS
            half = MIC_SR // (2 * video.FPS)
            idx = np.clip(np.round((t_video + true_v2m) * MIC_SR).astype(int), half, len(mouth) - half - 1)
            csum = np.concatenate([[0.0], np.cumsum(mouth, dtype=np.float64)])
            mouth_frames = (csum[idx + half] - csum[idx - half]) / (2 * half)

            motion = dataclasses.replace(video.head_motion(n_frames, mouth_frames, spec["leans"], rng),
                                         canvas_scale=width / video.WIDTH)
            start_offset_ns = 200_000_000 + 1_000_000 * k
            dropped = _dropped_frames(n_frames, frame_drops, np.random.default_rng([seed, k, 17]))
            jobs[spec["id"]] = pool.submit(video.write_kinect_mkv, take_dir / "kinect.mkv", motion,
                                           start_offset_ns, seed=seed * 10 + k, color_mode=color_mode, dropped=dropped)
            recorded = np.ones(n_frames, bool)
            recorded[dropped] = False

            lmk = np.stack([video.landmarks(motion, i) for i in range(n_frames)])
            np.savez_compressed(
                gt_dir / f"{spec['id']}_frames.npz",
                time_s=t_video, affine=np.stack([motion.affine(i) for i in range(n_frames)]),
                centre_xy=motion.centre_xy * motion.canvas_scale, roll_deg=motion.roll_deg, scale=motion.scale,
                jaw_px=motion.jaw_px, mouth_opening=mouth_frames.astype(np.float32), landmarks=lmk,
                face_box=np.concatenate([lmk.min(1), lmk.max(1)], axis=1), recorded=recorded,
            )
            log = CaptureLog(video_start_s=spec["video_to_mic"], mic_start_s=0.0, song_start_s=-spec["mic_to_song"])
            takes.append(Take(
                id=spec["id"], video=f"takes/{spec['id']}/kinect.mkv", mic=f"takes/{spec['id']}/mic.wav",
                song=Song(file=f"songs/{spec['id']}.flac", title=spec["title"], category=spec["category"],
                          language=spec["language"]),
                capture_log=log,
            ))
            gt_takes[spec["id"]] = {
                "offsets_s": {"mic_to_song": spec["mic_to_song"], "video_to_mic": true_v2m},
                "log_offsets_s": {"mic_to_song": spec["mic_to_song"], "video_to_mic": spec["video_to_mic"]},
                "cuts_s": [when for when, _ in spec["leans"]],
                "frames": n_frames, "fps": video.FPS, "bpm": spec["bpm"],
                "dropped_frames": [int(i) for i in dropped],
                "k4a_start_offset_ns": start_offset_ns,
                "files": {"song_vocals": f"{spec['id']}_song_vocals.wav",
                          "song_accompaniment": f"{spec['id']}_song_accompaniment.wav",
                          "frames": f"{spec['id']}_frames.npz"},
            }

        for name, job in sorted(jobs.items(), key=lambda item: item[0] == "light stage"):  # takes first
            job.result()
            if on_take:
                on_take(name)
    gt_light_stage = jobs["light stage"].result() if light_stage else None
    manifest = SessionManifest(
        session_id=f"sample{seed:03d}",
        subject=Subject(id=f"astronaut{seed:03d}", level="professional", gender="female"),
        takes=takes,
        light_stage=LightStage(photos="light_stage/photos", calibration="light_stage/calibration.json")
        if light_stage else None,
    )
    write_manifest(manifest, out)
    calib = video.kinect_calibration()
    p = calib["CalibrationInformation"]["Cameras"][0]["Intrinsics"]["ModelParameters"]
    scale = width / 4096
    K = [[p[2] * 4096 * scale, 0, width / 2 - 0.5], [0, p[3] * 3072 * scale, height / 2 - 0.5], [0, 0, 1]]
    (gt_dir / "ground_truth.json").write_text(json.dumps({
        "generator_version": GENERATOR_VERSION, "seed": seed, "duration_s": duration_s,
        "video": {"width": width, "height": height, "fps": video.FPS, "color_mode": color_mode},
        "audio": {"mic_sample_rate": MIC_SR, "song_sample_rate": SONG_SR},
        "camera": {"K": K}, "takes": gt_takes, "light_stage": gt_light_stage,
    }, indent=2))
    (gt_dir / "README.md").write_text(GROUND_TRUTH_README)
    return out
