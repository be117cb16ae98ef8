"""MusicFace's eye-state and head-dynamics metrics (SPEC §4).

- Eye state: a per-video min-max normalised eye-closure signal (0 open … 1 closed), closed where
  it exceeds 0.5 (a signal varying by less than 0.25 before normalising has no closures);
  closed runs shorter than τ = 0.5 s are blinks, longer ones long closures. Blink rate
  (blinks/s) and mean blink duration (s).
- CCA: the first canonical correlation (scikit-learn) between generated and ground-truth eye
  state, and between generated and ground-truth head-pose speed (frame-to-frame change of the
  6-d head pose), as MusicFace evaluates the rhythm rather than the pose itself.
- Roughness: (1/T) Σ_t R''(t)² of the head's Euler angles (degrees; global ∘ neck rotation), the
  second derivative by finite differences at 30 fps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch
from sklearn.cross_decomposition import CCA

from singinghead.features.face import frame_runs
from singinghead.schemas import motion as layout

TAU_S = 0.5
CLOSED = 0.5
MIN_RANGE = 0.25  # eye closure 0 (open) … 1 (closed): less variation than this is no eye movement


@dataclass(frozen=True)
class Closure:
    start: int  # first closed frame
    end: int  # one past the last
    kind: str  # "blink" | "long"


def normalise(signal: np.ndarray) -> np.ndarray:
    x = np.asarray(signal, dtype=float)
    lo, hi = np.nanmin(x), np.nanmax(x)
    return np.zeros_like(x) if hi - lo < 1e-9 else (x - lo) / (hi - lo)


def closures(eye_closure: np.ndarray, fps: float = layout.FPS, tau_s: float = TAU_S,
             min_range: float = MIN_RANGE) -> list[Closure]:
    """Closed runs of a (T,) closure signal (both eyes: pass their mean), split by duration. A
    signal whose range is below `min_range` has no closures (min-max normalising it would turn
    landmark jitter into blinks)."""
    x = np.asarray(eye_closure, dtype=float)
    if not np.isfinite(x).any() or np.nanmax(x) - np.nanmin(x) < min_range:
        return []
    return [Closure(s, e, "blink" if (e - s) / fps < tau_s else "long") for s, e in frame_runs(normalise(x) > CLOSED)]


def blink_stats(eye_closure: np.ndarray, fps: float = layout.FPS) -> dict[str, float]:
    found = closures(eye_closure, fps)
    blinks = [c for c in found if c.kind == "blink"]
    return {"blinks_per_s": len(blinks) / (len(eye_closure) / fps),
            "blink_duration_s": float(np.mean([(c.end - c.start) / fps for c in blinks])) if blinks else float("nan"),
            "long_closures": float(sum(c.kind == "long" for c in found))}


def canonical_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """First canonical correlation between two (T, d) sequences."""
    a = np.asarray(a, dtype=float).reshape(len(a), -1)
    b = np.asarray(b, dtype=float).reshape(len(b), -1)
    cca = CCA(n_components=1, max_iter=1000)
    u, v = cca.fit_transform(a, b)
    return float(np.corrcoef(u[:, 0], v[:, 0])[0, 1])


def head_speed(motion: np.ndarray) -> np.ndarray:
    pose = np.asarray(motion)[:, layout.HEAD_POSE]
    return np.diff(pose, axis=0)


def euler_degrees(motion: np.ndarray) -> np.ndarray:
    """(T, 3) XYZ Euler angles in degrees of the head rotation global ∘ neck."""
    m = torch.as_tensor(np.asarray(motion, dtype=np.float64))
    rot = roma.rotvec_to_rotmat(m[:, layout.GLOBAL_ORIENT]) @ roma.rotvec_to_rotmat(m[:, layout.NECK])
    return np.degrees(roma.rotmat_to_euler("XYZ", rot).numpy())


def roughness(motion: np.ndarray, fps: float = layout.FPS) -> float:
    angles = np.unwrap(np.radians(euler_degrees(motion)), axis=0)
    second = np.diff(np.degrees(angles), n=2, axis=0) * fps**2
    return float(np.mean(np.sum(second**2, axis=1)))
