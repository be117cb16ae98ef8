"""FLAME tracking from 68 landmarks on portrait frames (SPEC §2.3, §2.5–2.8).

Camera: the Kinect colour intrinsics carried into the portrait (crop then scale), so a segment's
camera is known; FLAME is placed in camera space by a rotation (global orientation) and a
translation per frame. Landmarks are FLAME's 68-point embedding, projected with that camera.

1. `fit_frames`: per-frame monocular fit of shape, expression, jaw, rotation and translation,
   all frames of a segment in one batch (Adam), initialised from a frontal pose at a plausible
   distance. The subject's shape is the mean of all frames' shapes.
2. `boxplot_outliers` / `replace_outliers` on every per-frame parameter group (sequence_filters).
3. `fit_sequence`: with the final shape fixed (folded into the landmark path), optimise global
   orientation, neck, translation, expression and jaw over the sequence:
   L = λl·Σ‖lmk − proj‖² + λs·Σ‖X_{t+1} − X_t‖² (pose, neck, translation; light on expression and
   jaw) + λr·(‖θ_global − θ̄‖² + ‖θ_neck‖²), θ̄ the sequence-mean head orientation. Global vs neck:
   from landmarks alone they are the same rotation, so the per-sequence mean orientation is
   carried by `global` and the per-frame deviations are split by the regulariser (neck gets the
   share its smaller weight allows); documented as a convention, not recovered from data.
Output motion per frame: [expression 50 | global 3 | neck 3 | jaw 3] (SPEC §2.8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from singinghead.flame.camera import project, to_camera
from singinghead.flame.layer import FlameLayer
from singinghead.schemas import motion as layout
from singinghead.tasks.sequence_filters import boxplot_outliers, replace_outliers


def _targets(lmk2d: np.ndarray, confidence: np.ndarray | None, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks with missing frames (NaN) zeroed, and per-frame weights (confidence, 0 when missing)."""
    lmk = np.asarray(lmk2d, dtype=np.float64)
    present = np.isfinite(lmk).all(axis=(1, 2))
    w = np.ones(len(lmk)) if confidence is None else np.nan_to_num(np.asarray(confidence, dtype=np.float64))
    w = np.where(present, w, 0.0)
    return torch.as_tensor(np.where(present[:, None, None], lmk, 0.0), dtype=dtype), torch.as_tensor(w, dtype=dtype)


def _jaw(pitch: torch.Tensor) -> torch.Tensor:
    """FLAME jaw pose from the opening angle: the jaw of a singer opens about x only."""
    return torch.cat([pitch, torch.zeros(len(pitch), 2, dtype=pitch.dtype, device=pitch.device)], dim=1)


def _initial_translation(target: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Per frame, the head placed behind the landmarks' centre at the distance their spread implies
    (a face ≈ 0.13 m wide)."""
    spread = (target[:, :, 0].amax(1) - target[:, :, 0].amin(1)).clamp(min=1.0)
    z = K[0, 0] * 0.13 / spread
    c = target.mean(1)
    return torch.stack([(c[:, 0] - K[0, 2]) / K[0, 0] * z, (c[:, 1] - K[1, 2]) / K[1, 1] * z, z], 1)


@dataclass
class FrameFit:
    shape: np.ndarray  # (T, 100)
    expression: np.ndarray  # (T, 50)
    global_orient: np.ndarray  # (T, 3) the whole head's rotation (no neck split per frame)
    jaw: np.ndarray  # (T, 3)
    translation: np.ndarray  # (T, 3) metres, camera space
    error_px: np.ndarray  # (T,) RMS landmark error (NaN where the frame had no landmarks)

    def groups(self) -> dict[str, np.ndarray]:
        """Per-frame parameter vectors for the box-plot outlier test, one per group."""
        return {"shape": self.shape, "expression": self.expression, "pose": self.global_orient,
                "jaw": self.jaw, "translation": self.translation}


def fit_frames(layer: FlameLayer, lmk2d: np.ndarray, K: np.ndarray, confidence: np.ndarray | None = None,
               steps: int = 200, lr: float = 0.04, trans_lr: float = 0.3, shape_reg: float = 1e-2,
               expr_reg: float = 1e-3) -> FrameFit:
    """Independent per-frame fits of (T, 68, 2) landmarks, batched (frames do not interact)."""
    dt = layer.p_template.dtype
    target, w = _targets(lmk2d, confidence, dt)
    Kt = torch.as_tensor(K, dtype=dt)
    T = len(target)
    shape = torch.zeros(T, layer.n_shape, dtype=dt, requires_grad=True)
    expr = torch.zeros(T, layer.n_expression, dtype=dt, requires_grad=True)
    rot = torch.zeros(T, 3, dtype=dt, requires_grad=True)
    pitch = torch.zeros(T, 1, dtype=dt, requires_grad=True)
    trans = _initial_translation(target, Kt).requires_grad_(True)
    zero = torch.zeros(T, 3, dtype=dt)
    opt = torch.optim.Adam([{"params": [shape, expr, rot, pitch]}, {"params": [trans], "lr": lr * trans_lr}], lr=lr,
                           fused=True)
    for _ in range(steps):
        opt.zero_grad()
        lmk = layer.landmarks(shape, expr, rot, zero, _jaw(pitch))
        err = (project(to_camera(lmk, trans), Kt) - target).pow(2).sum(-1).mean(-1)  # px² per frame
        loss = (w * err).sum() / 100 + shape_reg * shape.pow(2).sum() + expr_reg * expr.pow(2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            pitch.clamp_(0.0, 0.6)
    with torch.no_grad():
        lmk = layer.landmarks(shape, expr, rot, zero, _jaw(pitch))
        rms = (project(to_camera(lmk, trans), Kt) - target).pow(2).sum(-1).mean(-1).sqrt()
        rms[w == 0] = float("nan")
        jaw = _jaw(pitch)
    return FrameFit(shape.detach().numpy(), expr.detach().numpy(), rot.detach().numpy(), jaw.numpy(),
                    trans.detach().numpy(), rms.numpy())


def replace_frame_outliers(fit: FrameFit, scale: float = 1.5) -> tuple[FrameFit, dict[str, np.ndarray]]:
    """Box-plot outlier replacement (SPEC §2.5) on each parameter group of the per-frame fits;
    frames without landmarks count as outliers of every group. Returns the cleaned fits and the
    per-group outlier masks."""
    missing = ~np.isfinite(fit.error_px)
    if missing.all():
        raise ValueError("no frame has landmarks")
    flags, cleaned = {}, {}
    for name, values in fit.groups().items():
        mask = missing.copy()
        mask[~missing] = boxplot_outliers(values[~missing], scale)
        flags[name] = mask
        cleaned[name] = replace_outliers(values, mask)
    fixed = FrameFit(cleaned["shape"], cleaned["expression"], cleaned["pose"], cleaned["jaw"],
                     cleaned["translation"], fit.error_px)
    return fixed, flags


@dataclass
class SequenceFit:
    motion: np.ndarray  # (T, 59) SPEC §2.8 layout
    translation: np.ndarray  # (T, 3)
    error_px: np.ndarray  # (T,) RMS reprojection error


def fit_sequence(layer: FlameLayer, lmk2d: np.ndarray, K: np.ndarray, shape: np.ndarray, init: FrameFit,
                 confidence: np.ndarray | None = None, steps: int = 100, lr: float = 0.01,
                 w_smooth: float = 500.0, w_smooth_face: float = 5.0, w_reg: float = 50.0,
                 trans_lr: float = 0.1, full_mesh: bool = False) -> SequenceFit:
    """Sequence reprojection optimisation with the subject's shape fixed (see module docstring).

    `full_mesh` evaluates the landmarks through the whole skinned mesh (smplx LBS) instead of the
    landmark-only path: same result, for benchmarking.
    """
    dt = layer.p_template.dtype
    target, w = _targets(lmk2d, confidence, dt)
    Kt = torch.as_tensor(K, dtype=dt)
    T = len(target)
    shape_t = torch.as_tensor(shape, dtype=dt)[None]
    layer.fold_shape(shape_t)
    half = torch.as_tensor(init.global_orient, dtype=dt) / 2  # the minimum-norm split (module docstring)
    glob = half.clone().requires_grad_(True)
    neck = half.clone().requires_grad_(True)
    expr = torch.as_tensor(init.expression, dtype=dt).clone().requires_grad_(True)
    pitch = torch.as_tensor(init.jaw[:, :1], dtype=dt).clone().requires_grad_(True)
    trans = torch.as_tensor(init.translation, dtype=dt).clone().requires_grad_(True)
    # Adam's steps are ≈ lr in every parameter: translation moves in millimetres, not centimetres.
    opt = torch.optim.Adam([{"params": [glob, neck, expr, pitch]}, {"params": [trans], "lr": lr * trans_lr}], lr=lr,
                           fused=True)

    def landmarks():
        if full_mesh:
            return layer(shape_t.expand(T, -1), expr, glob, neck, _jaw(pitch))[1]
        return layer.landmarks(None, expr, glob, neck, _jaw(pitch))

    def diff2(x):
        return (x[1:] - x[:-1]).pow(2).sum()

    for _ in range(steps):
        opt.zero_grad()
        err = (project(to_camera(landmarks(), trans), Kt) - target).pow(2).sum(-1).mean(-1)
        l_smooth = diff2(glob) + diff2(neck) + 100 * diff2(trans)
        l_face = diff2(expr) + diff2(pitch)
        l_reg = glob.pow(2).sum() + neck.pow(2).sum()
        ((w * err).sum() + w_smooth * l_smooth + w_smooth_face * l_face + w_reg * l_reg).backward()
        opt.step()
        with torch.no_grad():
            pitch.clamp_(0.0, 0.6)
    with torch.no_grad():
        rms = (project(to_camera(landmarks(), trans), Kt) - target).pow(2).sum(-1).mean(-1).sqrt()
        rms[w == 0] = float("nan")
    layer.fold_shape(None)
    motion = np.zeros((T, layout.MOTION_DIM))
    motion[:, layout.EXPRESSION] = expr.detach().numpy()
    motion[:, layout.GLOBAL_ORIENT] = glob.detach().numpy()
    motion[:, layout.NECK] = neck.detach().numpy()
    motion[:, layout.JAW] = _jaw(pitch).detach().numpy()
    return SequenceFit(motion, trans.detach().numpy(), rms.numpy())
