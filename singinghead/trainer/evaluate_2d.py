"""`singinghead evaluate-2d`: the journal's Table IV columns for an identity's renderer.

For each window of the identity in a split, the renderer draws the portrait from the depth of
the window's fitted FLAME motion (with the reference image and the temporal embedding); the
frames are compared with the real portrait frames at the renderer's size: SSIM, CPBD (of the
generated frames), M-LMD and F-LMD between dlib's 68 landmarks on generated and real frames,
BA between the singing's beats and the generated landmarks' motion, and FID when Inception-v3
weights are provided (SINGINGHEAD_INCEPTION_WEIGHTS), LPIPS when AlexNet and LPIPS weights are
(SINGINGHEAD_ALEXNET_WEIGHTS, SINGINGHEAD_LPIPS_WEIGHTS); otherwise they are reported as n/a.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.schemas.settings import get_settings
from singinghead.storage import files
from singinghead.storage import release as store
from singinghead.storage.assets import dlib_landmark_model
from singinghead.trainer.metrics import beat, image
from singinghead.trainer.models.renderer import temporal_embedding
from singinghead.trainer.render import render_depth_sequence
from singinghead.trainer.renderer_train import decode_frames, depth_to_input, load_renderer
from singinghead.trainer.train import resolve_assets

COLUMNS_2D = ["size", "FID", "LPIPS", "SSIM", "CPBD", "M-LMD", "F-LMD", "BA"]


def dlib_landmarks(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 → (T, 68, 2); NaN where dlib finds no face."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(dlib_landmark_model())
    out = np.full((len(frames), 68, 2), np.nan)
    for i, f in enumerate(frames):
        faces = detector(f, 1)
        if faces:
            face = max(faces, key=lambda r: r.width() * r.height())
            shape = predictor(f, face)
            out[i] = [(p.x, p.y) for p in shape.parts()]
    return out


def _mean(values: list[float]) -> float:
    """Mean of the finite values; NaN (without a warning) when there is none."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).byte().numpy()


def evaluate_2d(renderer_checkpoint: str, data: str, split: str = "test", max_windows: int | None = None,
                frame_step: int = 4) -> dict:
    gen, state = load_renderer(renderer_checkpoint)
    size, subject = state["size"], state["subject"]
    flame_dir, _ = resolve_assets(Path(renderer_checkpoint).parent)
    layer = FlameLayer(load_flame(flame_dir))
    rows = [r for r in store.read_manifest(data).to_pylist() if r["subject_id"] == subject and r["split"] == split]
    if not rows:
        raise ValueError(f"{data}: no {split} window of {subject!r}")
    ssim, cpbd, mlmd, flmd, ba, real_all, fake_all = [], [], [], [], [], [], []
    for r in rows[:max_windows]:
        table = pq.read_table(files.join(data, r["shard_path"])).slice(r["shard_row"], 1)
        a = store.arrays(table, ["motion", "translation", "camera", "shape"])
        with torch.no_grad():
            depth = depth_to_input(render_depth_sequence(layer, torch.as_tensor(a["shape"][0]),
                                                         torch.as_tensor(a["motion"][0]),
                                                         torch.as_tensor(a["translation"][0]),
                                                         torch.as_tensor(a["camera"][0]), size))[:, None]
            picks = torch.arange(0, len(depth), frame_step)
            ref = state["reference"][None]
            fake = torch.cat([gen(torch.cat([depth[i:i + 1], ref, temporal_embedding(torch.tensor([int(i)]), size)],
                                            1)) for i in picks])
        real = decode_frames(files.join(data, r["video_path"]), size)[picks]
        fake_u8, real_u8 = _to_uint8(fake), _to_uint8(real)
        ssim.append(np.mean([image.ssim(f, g) for f, g in zip(fake_u8, real_u8, strict=True)]))
        cpbd.append(_mean([image.cpbd(f) for f in fake_u8]))
        lf, lr = dlib_landmarks(fake_u8), dlib_landmarks(real_u8)
        mlmd.append(image.lmd(lf, lr, mouth_only=True))
        flmd.append(image.lmd(lf, lr))
        singing = store.audio_rows(data, r["audio_block_path"], "singing", r["shard_row"], r["shard_row"] + 1)[0]
        audio_beats = (beat.audio_beats(singing) / frame_step).round().astype(int)
        ba.append(beat.beat_align(image.landmark_beats(np.nan_to_num(lf)), audio_beats))
        real_all.append(real_u8)
        fake_all.append(fake_u8)
    settings = get_settings()
    lpips = float("nan")
    if settings.alexnet_weights and settings.lpips_weights:
        metric = image.LPIPS(settings.alexnet_weights, settings.lpips_weights)
        lpips = float(np.mean(np.concatenate([metric(f, r) for f, r in zip(fake_all, real_all, strict=True)])))
    weights = settings.inception_weights
    fid = float("nan")
    if weights:
        fid = image.fid(image.inception_features(np.concatenate(real_all), weights),
                        image.inception_features(np.concatenate(fake_all), weights))
    return {"size": size, "FID": fid, "LPIPS": lpips, "SSIM": _mean(ssim), "CPBD": _mean(cpbd),
            "M-LMD": _mean(mlmd), "F-LMD": _mean(flmd), "BA": _mean(ba), "windows": len(ssim), "subject": subject}


def table_2d(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS_2D) + " |", "|" + "---|" * len(COLUMNS_2D)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) if c == "size" else ("n/a" if r[c] != r[c] else f"{r[c]:.4f}")
                                      for c in COLUMNS_2D) + " |")
    return "\n".join(lines) + "\n"
