"""UniSinger's training losses (SPEC §3): λk·KL + λr·‖M̂ − M‖² + λv·‖ΔM̂ − ΔM‖² + λm·face vertices.

The vertex term runs both motions through the FLAME layer (skinning only the vertices of the
face mask from the FLAME files) and compares them in centimetres (squared), so its scale is
comparable with the parameter terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from singinghead.flame.layer import FlameLayer
from singinghead.schemas import motion as layout


@dataclass
class LossWeights:
    kl: float = 1e-4
    rec: float = 1.0
    vel: float = 1.0
    mesh: float = 1.0


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)), summed over the latent, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()


def reconstruction(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).sum(-1).mean()


def velocity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])).pow(2).sum(-1).mean()


def posed_vertices(layer: FlameLayer, shape: torch.Tensor, motion: torch.Tensor, subset: torch.Tensor,
                   with_head_pose: bool = True) -> torch.Tensor:
    """(B, T, S, 3) vertices of `subset` for (B, 100) shapes and (B, T, 59) motion; without head
    pose, global and neck are zero (the jaw is kept), as the papers' vertex metrics use."""
    b, t, _ = motion.shape
    m = motion.reshape(b * t, -1)
    glob, neck = m[:, layout.GLOBAL_ORIENT], m[:, layout.NECK]
    if not with_head_pose:
        glob, neck = torch.zeros_like(glob), torch.zeros_like(neck)
    v = layer.vertices(shape, m[:, layout.EXPRESSION], glob, neck, m[:, layout.JAW], subset)  # a shape per sequence
    return v.view(b, t, -1, 3)


def face_vertices(layer: FlameLayer, shape, pred, target, subset) -> torch.Tensor:
    diff = posed_vertices(layer, shape, pred, subset) - posed_vertices(layer, shape, target, subset)
    return (100.0 * diff).pow(2).sum(-1).mean()  # cm²


def total_loss(out: dict, batch: dict, weights: LossWeights, layer: FlameLayer | None, face: torch.Tensor | None
               ) -> dict[str, torch.Tensor]:
    pred, target = out["motion"], batch["motion"]
    terms = {"rec": reconstruction(pred, target), "vel": velocity(pred, target)}
    if "mu" in out:
        terms["kl"] = kl_divergence(out["mu"], out["logvar"])
    if layer is not None and weights.mesh > 0:
        terms["mesh"] = face_vertices(layer, batch["shape"], pred, target, face)
    terms["loss"] = sum(getattr(weights, k) * v for k, v in terms.items())
    return terms
