"""The perspective camera FLAME is tracked with: Kinect colour intrinsics carried into a portrait.

FLAME's model space is y up, z towards the viewer; the camera's is y down, z forward (OpenCV).
A frame places the model in camera space by the fixed flip below and a translation (the head's
rotation is FLAME's global orientation).
"""

from __future__ import annotations

import numpy as np
import torch


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
    """(B, N, 3) camera-space points (x right, y down, z forward) → (B, N, 2) pixels; K is one
    camera (3, 3) or one per frame (B, 3, 3) (a take's segments are cropped differently)."""
    uv = points[..., :2] / points[..., 2:3]
    focal = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)
    centre = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1)
    if K.dim() == 3:
        focal, centre = focal[:, None], centre[:, None]
    return uv * focal + centre


# FLAME is y-up, z towards the viewer; the camera is y-down, z forward: a fixed flip.
FLIP = torch.tensor([1.0, -1.0, -1.0])


def to_camera(lmk_model: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    return lmk_model * FLIP.to(lmk_model) + translation[:, None, :]
