"""Face features from 68 landmarks (dlib/iBUG order), shared by the dense-landmark step and the
trainer's eye metrics, so measured and generated eye states are one definition.

- Eye aspect ratio (Soukupová & Čech 2016) per eye.
- Eye closure per eye = 1 − EAR / its open-eye level, the open level being the 90th percentile of
  the EAR over the whole sequence (a video, as MusicFace normalises), clipped to 0 … 1.
- Runs of consecutive frames where a per-frame condition holds (blinks, tracking failures).
"""

from __future__ import annotations

import numpy as np


def eye_aspect_ratio(eye: np.ndarray) -> np.ndarray:
    """EAR of (…, 6, 2) eye contours (dlib order)."""
    v = np.linalg.norm(eye[..., 1, :] - eye[..., 5, :], axis=-1) + np.linalg.norm(eye[..., 2, :] - eye[..., 4, :],
                                                                                    axis=-1)
    h = np.linalg.norm(eye[..., 0, :] - eye[..., 3, :], axis=-1)
    return v / (2.0 * np.maximum(h, 1e-6))


def eye_closure(landmarks: np.ndarray) -> np.ndarray:
    """(T, 2) closure of the left and right eye for a sequence's (T, 68, 2) landmarks."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    ear = np.stack([eye_aspect_ratio(lmk[:, 36:42]), eye_aspect_ratio(lmk[:, 42:48])], axis=1)
    open_level = np.nanpercentile(ear, 90, axis=0) if np.isfinite(ear).any() else np.ones(2)
    return np.clip(1.0 - ear / np.maximum(open_level, 1e-6), 0.0, 1.0)


def frame_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) frames, end exclusive, of every run of consecutive True values in a (T,) mask."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))
