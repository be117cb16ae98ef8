"""Sequence clean-up used by the FLAME tracking (SPEC §2.5, §2.6).

- Box-plot outliers: for one parameter vector per frame (expression, pose, camera, …) the
  distance of each frame to the temporal mean is computed; frames whose distance falls outside
  [Q1 − s·IQR, Q3 + s·IQR] are outliers and take the value of the nearest good frame (linear
  interpolation between the good frames on both sides; the nearest one at the ends).
- Landmark smoothing: Adam on Σ‖lmk_{t+1} − lmk_t‖² plus a fidelity term λ‖lmk − detected‖²
  weighted by the detection confidence. The paper states only the smoothness term; without
  fidelity the minimiser is a constant sequence, so the fidelity weight is ours (documented).
"""

from __future__ import annotations

import numpy as np
import torch


def boxplot_outliers(params: np.ndarray, scale: float = 1.5) -> np.ndarray:
    """Boolean (T,) mask of frames whose parameter vector is a box-plot outlier."""
    x = np.asarray(params, dtype=np.float64).reshape(len(params), -1)
    dist = np.linalg.norm(x - x.mean(axis=0), axis=1)
    q1, q3 = np.percentile(dist, [25, 75])
    iqr = q3 - q1
    return (dist < q1 - scale * iqr) | (dist > q3 + scale * iqr)


def replace_outliers(params: np.ndarray, outliers: np.ndarray) -> np.ndarray:
    """Outlier frames replaced from the neighbouring good frames (per dimension, linear)."""
    x = np.asarray(params, dtype=np.float64)
    good = np.flatnonzero(~outliers)
    if len(good) == 0 or not outliers.any():
        return x.copy()
    flat = x.reshape(len(x), -1)
    t = np.arange(len(x))
    filled = np.stack([np.interp(t, good, flat[good, d]) for d in range(flat.shape[1])], axis=1)
    return filled.reshape(x.shape)


def smooth_landmarks(lmk: np.ndarray, confidence: np.ndarray | None = None, fidelity: float = 1.0,
                     steps: int = 300, lr: float = 0.5) -> np.ndarray:
    """(T, N, 2) landmarks smoothed in time by Adam (see module docstring)."""
    target = torch.as_tensor(np.asarray(lmk, dtype=np.float64))
    w = torch.ones(len(target), dtype=torch.float64) if confidence is None else \
        torch.as_tensor(np.asarray(confidence, dtype=np.float64))
    x = target.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        smooth = (x[1:] - x[:-1]).pow(2).sum()
        fit = (w[:, None, None] * (x - target).pow(2)).sum()
        (smooth + fidelity * fit).backward()
        opt.step()
    return x.detach().numpy()
