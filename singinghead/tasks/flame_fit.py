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

from singinghead.flame.layer import FlameLayer
from singinghead.schemas import motion as layout


def portrait_camera(K: np.ndarray, crop: tuple[int, int, int], size: int = 1024) -> np.ndarray:
    """Intrinsics of a portrait cut from the source by a square crop (x0, y0, side) and scaled."""
    x0, y0, side = crop
    s = size / side
    Kp = np.array(K, dtype=np.float64).copy()
    Kp[0, 0] *= s
    Kp[1, 1] *= s
    Kp[0, 2] = (K[0, 2] - x0 + 0.5) * s - 0.5
    Kp[1, 2] = (K[1, 2] - y0 + 0.5) * s - 0.5
    return Kp


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) camera-space points (x right, y down, z forward) → (B, N, 2) pixels."""
    uv = points[..., :2] / points[..., 2:3]
    return uv * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


# FLAME is y-up, z towards the viewer; the camera is y-down, z forward: a fixed flip.
_FLIP = torch.tensor([1.0, -1.0, -1.0])


def to_camera(lmk_model: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    return lmk_model * _FLIP.to(lmk_model) + translation[:, None, :]


@dataclass
class FrameFit:
    shape: np.ndarray  # (T, 100)
    expression: np.ndarray  # (T, 50)
    global_orient: np.ndarray  # (T, 3)
    jaw: np.ndarray  # (T, 3)
    translation: np.ndarray  # (T, 3) metres, camera space
    error_px: np.ndarray  # (T,) RMS landmark error


def fit_frames(layer: FlameLayer, lmk2d: np.ndarray, K: np.ndarray, steps: int = 400, lr: float = 0.02,
               shape_reg: float = 1e-2, expr_reg: float = 1e-3) -> FrameFit:
    """Independent per-frame fits of (T, 68, 2) landmarks, batched."""
    dt = layer.v_template.dtype
    target = torch.as_tensor(lmk2d, dtype=dt)
    Kt = torch.as_tensor(K, dtype=dt)
    T = len(target)
    shape = torch.zeros(T, layer.n_shape, dtype=dt, requires_grad=True)
    expr = torch.zeros(T, layer.n_expression, dtype=dt, requires_grad=True)
    rot = torch.zeros(T, 3, dtype=dt, requires_grad=True)
    jaw = torch.zeros(T, 3, dtype=dt, requires_grad=True)
    # Initial distance from the landmarks' spread: a face ~0.13 m wide.
    spread = (target[:, :, 0].amax(1) - target[:, :, 0].amin(1)).clamp(min=1.0)
    z0 = Kt[0, 0] * 0.13 / spread
    centre = target.mean(1)
    trans0 = torch.stack([(centre[:, 0] - Kt[0, 2]) / Kt[0, 0] * z0, (centre[:, 1] - Kt[1, 2]) / Kt[1, 1] * z0, z0], 1)
    trans = trans0.clone().requires_grad_(True)
    zero = torch.zeros(T, 3, dtype=dt)
    opt = torch.optim.Adam([shape, expr, rot, jaw, trans], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        lmk = layer.landmarks(shape, expr, rot, zero, jaw)
        proj = project(to_camera(lmk, trans), Kt)
        err = (proj - target).pow(2).sum(-1).mean(-1)  # px² per frame
        loss = err.sum() / 100 + shape_reg * shape.pow(2).sum() + expr_reg * expr.pow(2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            jaw[:, 1:] = 0.0  # the jaw opens (pitch) only
            jaw[:, 0].clamp_(0.0, 0.6)
    with torch.no_grad():
        lmk = layer.landmarks(shape, expr, rot, zero, jaw)
        rms = (project(to_camera(lmk, trans), Kt) - target).pow(2).sum(-1).mean(-1).sqrt()
    return FrameFit(shape.detach().numpy(), expr.detach().numpy(), rot.detach().numpy(), jaw.detach().numpy(),
                    trans.detach().numpy(), rms.numpy())


@dataclass
class SequenceFit:
    motion: np.ndarray  # (T, 59) SPEC §2.8 layout
    translation: np.ndarray  # (T, 3)
    error_px: np.ndarray  # (T,) RMS reprojection error


def fit_sequence(layer: FlameLayer, lmk2d: np.ndarray, K: np.ndarray, shape: np.ndarray, init: FrameFit,
                 steps: int = 400, lr: float = 0.01, w_smooth: float = 0.01, w_smooth_face: float = 1e-4,
                 w_reg: float = 1e-3) -> SequenceFit:
    """Sequence reprojection optimisation with the subject's shape fixed (see module docstring)."""
    dt = layer.v_template.dtype
    target = torch.as_tensor(lmk2d, dtype=dt)
    Kt = torch.as_tensor(K, dtype=dt)
    layer.fold_shape(torch.as_tensor(shape, dtype=dt)[None])
    mean_rot = torch.as_tensor(init.global_orient.mean(0), dtype=dt)
    glob = torch.as_tensor(init.global_orient, dtype=dt).clone().requires_grad_(True)
    neck = torch.zeros_like(glob, requires_grad=True)
    expr = torch.as_tensor(init.expression, dtype=dt).clone().requires_grad_(True)
    jaw = torch.as_tensor(init.jaw, dtype=dt).clone().requires_grad_(True)
    trans = torch.as_tensor(init.translation, dtype=dt).clone().requires_grad_(True)
    opt = torch.optim.Adam([glob, neck, expr, jaw, trans], lr=lr)

    def diff2(x):
        return (x[1:] - x[:-1]).pow(2).sum()

    for _ in range(steps):
        opt.zero_grad()
        lmk = layer.landmarks(None, expr, glob, neck, jaw)
        proj = project(to_camera(lmk, trans), Kt)
        l_lmk = (proj - target).pow(2).sum(-1).mean()
        l_smooth = diff2(glob) + diff2(neck) + 100 * diff2(trans) \
            + w_smooth_face / w_smooth * (diff2(expr) + diff2(jaw))
        l_reg = (glob - mean_rot).pow(2).sum() + 4.0 * neck.pow(2).sum()
        (l_lmk + w_smooth * 1e3 * l_smooth + w_reg * 1e3 * l_reg).backward()
        opt.step()
        with torch.no_grad():
            jaw[:, 1:] = 0.0
            jaw[:, 0].clamp_(0.0, 0.6)
    with torch.no_grad():
        lmk = layer.landmarks(None, expr, glob, neck, jaw)
        rms = (project(to_camera(lmk, trans), Kt) - target).pow(2).sum(-1).mean(-1).sqrt()
    layer.fold_shape(None)
    motion = np.zeros((len(target), layout.MOTION_DIM))
    motion[:, layout.EXPRESSION] = expr.detach().numpy()
    motion[:, layout.GLOBAL_ORIENT] = glob.detach().numpy()
    motion[:, layout.NECK] = neck.detach().numpy()
    motion[:, layout.JAW] = jaw.detach().numpy()
    return SequenceFit(motion, trans.detach().numpy(), rms.numpy())
