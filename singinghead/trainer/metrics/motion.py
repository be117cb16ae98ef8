"""3D metrics of generated motion against the ground truth, vectorised in torch.

Inputs are per window; samples are stacked on a leading axis n. Vertex metrics use vertices
without head pose (global and neck zero, jaw kept) in metres and report millimetres:
- LVE: per frame the largest L2 error over the lip vertices, averaged over frames.
- FVE: L2 error averaged over the face vertices and frames.
- FDD: per upper-face vertex (forehead + eye region) the standard deviation over time of its
  displacement norm from the subject's neutral face; ground truth minus prediction, averaged
  over vertices (CodeTalker's upper-face dynamics deviation).
- PPE: L2 of the 6-d head pose (global + neck) per frame, averaged.
- Diversity: 1/(n(n−1)) Σ_i Σ_{j≠i} ‖L_i − L_j‖² over the 68 landmarks (squared Frobenius norm
  per frame, averaged over frames), in mm².
- MinDist / MeanDist / APD (conference paper, §5.1: min over samples of ‖M̂ − M‖², mean over
  samples, and 1/(n(n−1)) Σ_i Σ_{j≠i} ‖M_i − M_j‖²), on the 59-d motion. The paper's ‖·‖² is
  written over the whole motion; its Table 2 magnitudes (2.6–2.9 for 59-d FLAME parameters) are
  those of the per-frame squared norm, so we follow that: squared L2 per frame, averaged over
  frames (= the whole-sequence norm / T), then min / mean over samples or mean over pairs.
Mean and Min over samples: the metric of every sample, then its mean or its minimum.
"""

from __future__ import annotations

import torch

from singinghead.schemas import motion as layout

MM = 1000.0


def lve(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, T, S, 3) lip vertices of n samples vs (T, S, 3) → (n,) mm."""
    return (pred - target).norm(dim=-1).amax(-1).mean(-1) * MM


def fve(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).norm(dim=-1).mean((-1, -2)) * MM


def fdd(pred: torch.Tensor, target: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """(n, T, S, 3), (T, S, 3), (S, 3) → (n,) mm."""
    def dynamics(v):
        return (v - neutral).norm(dim=-1).std(dim=-2, unbiased=False)  # (…, S)

    return (dynamics(target) - dynamics(pred)).mean(-1) * MM


def ppe(pred_motion: torch.Tensor, target_motion: torch.Tensor) -> torch.Tensor:
    """(n, T, 59), (T, 59) → (n,)."""
    return (pred_motion[..., layout.HEAD_POSE] - target_motion[..., layout.HEAD_POSE]).norm(dim=-1).mean(-1)


def _pairwise_sq(x: torch.Tensor) -> torch.Tensor:
    """(n, T, …) → (n, n) mean over frames of the squared distance between samples."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)  # (n, T, D)
    return (flat[:, None] - flat[None]).pow(2).sum(-1).mean(-1)


def diversity(landmarks: torch.Tensor) -> torch.Tensor:
    """(n, T, 68, 3) landmarks of n samples (metres) → mm²; 0 for one sample."""
    n = landmarks.shape[0]
    if n < 2:
        return landmarks.new_zeros(())
    return _pairwise_sq(landmarks * MM).sum() / (n * (n - 1))


def min_mean_dist(samples: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, T, 59) samples vs (T, 59) → (MinDist, MeanDist)."""
    d = (samples - target).pow(2).sum(-1).mean(-1)
    return d.min(), d.mean()


def apd(samples: torch.Tensor) -> torch.Tensor:
    n = samples.shape[0]
    if n < 2:
        return samples.new_zeros(())
    return _pairwise_sq(samples).sum() / (n * (n - 1))


def mean_and_min(per_sample: torch.Tensor) -> tuple[float, float]:
    return float(per_sample.mean()), float(per_sample.min())
