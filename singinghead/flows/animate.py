"""`singinghead animate IMAGE AUDIO [BGM]`: one portrait photo and a song → a singing portrait MP4.

Shape and camera from the image: MTCNN + dlib 68 landmarks on a square crop twice the face box,
scaled to a 1024² portrait, and a monocular FLAME fit of that frame with an assumed portrait
camera (fx = fy = 2000 px at 1024², centred: a single photo has no calibration). Motion: the
UniSinger VAE (z ~ N(0, I)) per 8 s window of the singing audio and BGM MFCC, consecutive windows
overlapping by 2 s and cross-faded there (no jump at window boundaries). Depth video: the
FLAME meshes rendered with that camera. Frames: the identity's renderer (depth + reference image
+ temporal embedding) when a renderer checkpoint is given, otherwise the depth video itself.
The singing (mixed with the BGM when given) is muxed in with ffmpeg.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import signal

from singinghead.capture_rigs.audio_files import read_audio
from singinghead.features.audio import bgm_mfcc_per_frame
from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.schemas import release as R
from singinghead.schemas.errors import InputError
from singinghead.storage.assets import ffmpeg_exe
from singinghead.tasks.flame_fit import fit_frames
from singinghead.tasks.landmarks import face_analyser
from singinghead.trainer.models.renderer import temporal_embedding
from singinghead.trainer.render import render_depth_sequence
from singinghead.trainer.renderer_train import depth_to_input, load_renderer
from singinghead.trainer.train import load_for_inference, resolve_assets

PORTRAIT = 1024
ASSUMED_CAMERA = (2000.0, 2000.0, 511.5, 511.5)


def portrait_from_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1024² RGB portrait, its 68 landmarks): the largest face, a square crop twice its box."""
    analyser = face_analyser("cpu")
    boxes, probs = analyser.detect(image)
    if len(probs) == 0:
        raise ValueError("no face found in the image")
    box = boxes[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = 2 * max(box[2] - box[0], box[3] - box[1])
    x0, y0 = cx - side / 2, cy - side / 2
    M = np.array([[PORTRAIT / side, 0, -x0 * PORTRAIT / side], [0, PORTRAIT / side, -y0 * PORTRAIT / side]])
    portrait = cv2.warpAffine(image, M, (PORTRAIT, PORTRAIT), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    pboxes, pprobs = analyser.detect(portrait)
    if len(pprobs) == 0:
        raise ValueError("the face is lost after cropping")
    return portrait, analyser.landmarks(portrait, pboxes[int(np.argmax(pprobs))])


def _audio_16k(path: Path) -> np.ndarray:
    x, sr = read_audio(path, mono=True)
    ratio = Fraction(R.SAMPLE_RATE, sr).limit_denominator(1000)
    return signal.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


#: Consecutive 8 s windows overlap by this many frames (2 s) and are cross-faded there, so the
#: motion has no jump where one window's sample ends and the next one's begins.
OVERLAP_FRAMES = 60


def window_starts(frames: int, overlap: int = OVERLAP_FRAMES) -> list[int]:
    """First frame of each 8 s window covering `frames`, consecutive windows overlapping by `overlap`."""
    hop = R.WINDOW_FRAMES - overlap
    return list(range(0, max(frames - overlap, 1), hop))


def blend_windows(chunks: list[torch.Tensor], starts: list[int], frames: int, overlap: int = OVERLAP_FRAMES
                  ) -> torch.Tensor:
    """(frames, D) motion from windows (each (240, D)) starting at `starts`: in each overlap the
    earlier window fades out and the later one in linearly (a weighted mean of the two)."""
    dim = chunks[0].shape[-1]
    total = torch.zeros(starts[-1] + R.WINDOW_FRAMES, dim)
    weight = torch.zeros(len(total), 1)
    ramp = torch.ones(R.WINDOW_FRAMES)
    ramp[:overlap] = torch.linspace(0, 1, overlap + 2)[1:-1]
    ramp[-overlap:] = torch.linspace(1, 0, overlap + 2)[1:-1]
    for k, (start, chunk) in enumerate(zip(starts, chunks, strict=True)):
        w = ramp.clone()
        if k == 0:
            w[:overlap] = 1.0
        if k == len(chunks) - 1:
            w[-overlap:] = 1.0
        total[start:start + R.WINDOW_FRAMES] += w[:, None] * chunk
        weight[start:start + R.WINDOW_FRAMES] += w[:, None]
    return (total / weight)[:frames]


def animate(image_path: str | Path, audio_path: str | Path, bgm_path: str | Path | None, vae_checkpoint: str | Path,
            out: str | Path, renderer_checkpoint: str | Path | None = None, size: int = 256, seed: int = 0) -> dict:
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(image_path, "not a readable image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        portrait, lmk = portrait_from_image(image)
    except ValueError as exc:
        raise InputError(image_path, str(exc)) from None
    model, _, run = load_for_inference(vae_checkpoint)
    flame_dir, _ = resolve_assets(run)
    layer = FlameLayer(load_flame(flame_dir))
    fx, fy, cx, cy = ASSUMED_CAMERA
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    fit = fit_frames(layer, lmk[None], K)
    shape = torch.as_tensor(fit.shape[0], dtype=torch.float32)

    singing = _audio_16k(Path(audio_path))
    bgm = _audio_16k(Path(bgm_path)) if bgm_path else np.zeros_like(singing)
    frames = int(len(singing) / R.SAMPLE_RATE * 30)
    if frames < 1:
        raise InputError(audio_path, "shorter than one video frame")
    starts = window_starts(frames)
    pad = (starts[-1] + R.WINDOW_FRAMES) * R.WINDOW_SAMPLES // R.WINDOW_FRAMES
    sing_p = np.pad(singing[:pad], (0, max(0, pad - len(singing))))
    bgm_p = np.pad(bgm[:pad], (0, max(0, pad - len(bgm))))
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for start in starts:
        a = start * R.WINDOW_SAMPLES // R.WINDOW_FRAMES
        b = a + R.WINDOW_SAMPLES
        mfcc = torch.from_numpy(bgm_mfcc_per_frame(bgm_p[a:b], R.WINDOW_FRAMES))[None]
        with torch.no_grad():
            chunks.append(model.generate(shape[None], torch.from_numpy(sing_p[a:b])[None], mfcc, generator=g)[0])
    motion = blend_windows(chunks, starts, frames)
    translation = torch.as_tensor(fit.translation[0], dtype=torch.float32).expand(frames, 3)
    with torch.no_grad():
        depth = render_depth_sequence(layer, shape, motion, translation, torch.tensor(ASSUMED_CAMERA), size)
        depth_in = depth_to_input(depth)[:, None]
        if renderer_checkpoint:
            gen, state = load_renderer(renderer_checkpoint)
            ref = torch.from_numpy(cv2.resize(portrait, (size, size), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
            on = next(gen.parameters()).device
            ref = (ref.float() / 127.5 - 1)[None].to(on)
            video = []
            for i in range(frames):
                cond = torch.cat([depth_in[i:i + 1].to(on), ref, temporal_embedding(torch.tensor([i], device=on),
                                                                                   size)], 1)
                video.append(((gen(cond)[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().cpu().numpy())
        else:
            video = [np.repeat(((d[0] + 1) * 127.5).clamp(0, 255).byte().numpy()[..., None], 3, axis=2)
                     for d in depth_in]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mix = np.clip(singing + np.pad(bgm[: len(singing)], (0, max(0, len(singing) - len(bgm)))), -1, 1)
    wav = out.with_suffix(".mix.f32")
    wav.write_bytes(mix.astype("<f4").tobytes())
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{size}x{size}", "-r", "30", "-i", "-", "-f", "f32le", "-ar", str(R.SAMPLE_RATE), "-ac", "1",
           "-i", str(wav), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-c:a", "aac", "-shortest",
           "-movflags", "+faststart", str(out)]
    try:
        proc = subprocess.run(cmd, input=np.stack(video).tobytes(), capture_output=True)
    finally:
        wav.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {out}: {proc.stderr.decode()[-400:]}")
    return {"out": str(out), "frames": frames, "rendered": bool(renderer_checkpoint),
            "shape_fit_error_px": float(fit.error_px[0])}
