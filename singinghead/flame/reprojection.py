"""FLAME's 68 landmarks projected into the camera, and their squared error, with a hand-written gradient.

The FLAME fits evaluate this thousands of times on a few hundred frames: through autograd, a
step is about 150 small tensor operations forward and back, and their overhead, not their
arithmetic, is the cost. Written out, it is one product for the blend (coefficients and pose
correctives at once), one batched product for skinning, translation and the camera flip at once,
and the kinematic chain of the two joints that move landmarks (neck and jaw, under the global
rotation), forward and back. The result and its gradient equal autograd's through
`FlameLayer.landmarks` and `camera.project` (tests/test_flame.py, float64 to 1e-12).

Layout: per landmark l, the row Q_l = [P_l,neck (3), P_l,jaw (3), w_l,neck, w_l,jaw, 1] (P the
landmark's blended, joint-weighted rest position, w its skinning weights) times, per frame, the
9 × 3 matrix M = [A_neck^T; A_jaw^T; t_neck; t_jaw] (each column flipped into camera axes) + the
translation row: camera-space landmarks = Q @ M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from singinghead.flame.camera import FLIP
from singinghead.flame.layer import FlameLayer

#: Neck (1) and jaw (2): the joints whose transforms move landmarks, under the root (0).
_NECK, _JAW = 1, 2


@dataclass(frozen=True)
class LandmarkBasis:
    """The landmark path's blend in the layout above: Q = base + [coefficients, pose features] @ dirs."""

    base: torch.Tensor  # (1, 68·9)
    dirs: torch.Tensor  # (K + 18, 68·9): the coefficients' directions, then the neck's and jaw's pose correctives
    joints: torch.Tensor  # (1, 9): root, neck and jaw rest positions
    joint_dirs: torch.Tensor  # (K, 9)

    @classmethod
    def of(cls, layer: FlameLayer, shape: torch.Tensor | None = None) -> LandmarkBasis:
        """Coefficients = [shape, expression] (K = n_shape + n_expression); or, with the subject's
        `shape` (1, n_shape) fixed, expression only (the shape folded into the base)."""
        if [int(j) for j in layer.lmk_joints] != [_NECK, _JAW]:
            raise ValueError(f"landmarks move with joints {layer.lmk_joints.tolist()}, not the neck and jaw only")
        n = layer.n_shape
        template, dirs = layer.p_template[:, 0], layer.p_dirs
        j_template, j_dirs = layer.j_template.flatten(), layer.j_dirs
        if shape is not None:
            template, dirs = template + dirs[:, :n] @ shape[0], dirs[:, n:]
            j_template, j_dirs = j_template + shape[0] @ j_dirs[:n], j_dirs[n:]
        on = {"dtype": template.dtype, "device": template.device}
        rows = lambda a: a.reshape(68, 6, -1)  # noqa: E731  (landmark, joint·xyz, ·)
        constants = torch.cat([layer.lmk_joint_weights, torch.ones(68, 1, **on)], 1)[:, :, None]  # (68, 3, 1)
        base = torch.cat([rows(template[:, None]), constants], 1).reshape(1, -1)
        blend = torch.cat([dirs, layer.p_posedirs[:, :18]], 1)  # (68·6, K + 18)
        blend = torch.cat([rows(blend), torch.zeros(68, 3, blend.shape[1], **on)], 1).reshape(-1, blend.shape[1])
        return cls(base, blend.T.contiguous(), j_template[None, :9], j_dirs[:, :9].contiguous())


def reprojection_error(basis: LandmarkBasis, coefficients: torch.Tensor, global_rot: torch.Tensor,
                       neck_rot: torch.Tensor, jaw_rot: torch.Tensor, translation: torch.Tensor, K: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """Per frame, the mean over the 68 landmarks of the squared pixel error (B,): coefficients
    (B, K), rotation matrices (B, 3, 3), translation (B, 3) m, K one camera (3, 3) or one per frame
    (B, 3, 3), target (B, 68, 2) px."""
    focal = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1).reshape(-1, 1, 2)
    centre = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1).reshape(-1, 1, 2)
    return _Reprojection.apply(coefficients, global_rot, neck_rot, jaw_rot, translation, basis,
                               (target - centre) / focal, focal * focal)


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[:, :, None] * b[:, None, :]


def _tmv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """m^T v per frame."""
    return (v[:, None, :] @ m)[:, 0]


class _Reprojection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c, R0, R1, R2, trans, basis: LandmarkBasis, target_n, focal2):
        b = c.shape[0]
        eye = torch.eye(3, dtype=c.dtype, device=c.device)
        features = torch.cat([c, (R1 - eye).reshape(b, 9), (R2 - eye).reshape(b, 9)], 1)
        Q = torch.addmm(basis.base, features, basis.dirs).view(b, 68, 9)
        J = torch.addmm(basis.joints, c, basis.joint_dirs).view(b, 3, 3)
        J0, J1, J2 = J.unbind(1)
        A1 = R0 @ R1
        A2 = A1 @ R2
        # World transforms of the neck and jaw relative to rest: x ↦ A x + t (smplx's rigid chain).
        pos1 = J0 + (R0 @ (J1 - J0)[..., None])[..., 0]
        pos2 = pos1 + (A1 @ (J2 - J1)[..., None])[..., 0]
        t1 = pos1 - (A1 @ J1[..., None])[..., 0]
        t2 = pos2 - (A2 @ J2[..., None])[..., 0]
        flip = FLIP.to(c)
        M = torch.cat([A1.transpose(1, 2), A2.transpose(1, 2), t1[:, None], t2[:, None]], 1) * flip
        M = torch.cat([M, trans[:, None]], 1)  # (B, 9, 3)
        cam = torch.bmm(Q, M)  # (B, 68, 3) camera space
        z = cam[..., 2:]
        q = cam[..., :2] / z
        res = q - target_n  # in focal lengths
        ctx.save_for_backward(basis.dirs, basis.joint_dirs, R0, R1, R2, J, A1, A2, Q, M, z, q, res, focal2)
        return (res * res * focal2).sum(-1).mean(-1)

    @staticmethod
    def backward(ctx, g_err):
        dirs, joint_dirs, R0, R1, R2, J, A1, A2, Q, M, z, q, res, focal2 = ctx.saved_tensors
        b = Q.shape[0]
        g_q = res * focal2 * (g_err * (2.0 / 68))[:, None, None]
        g_xy = g_q / z
        g_cam = torch.cat([g_xy, -(g_xy * q).sum(-1, keepdim=True)], -1)  # (B, 68, 3)
        g_M = torch.bmm(Q.transpose(1, 2), g_cam)  # (B, 9, 3)
        g_Q = torch.bmm(g_cam, M.transpose(1, 2)).view(b, -1)
        g_features = g_Q @ dirs.T
        n = g_features.shape[1] - 18
        g_trans = g_M[:, 8]
        g_M = g_M[:, :8] * FLIP.to(g_M)
        g_A1, g_A2 = g_M[:, 0:3].transpose(1, 2), g_M[:, 3:6].transpose(1, 2)
        g_t1, g_t2 = g_M[:, 6], g_M[:, 7]
        J0, J1, J2 = J.unbind(1)
        # Back through t2 = pos2 − A2·J2, t1 = pos1 − A1·J1, pos2 = pos1 + A1·(J2 − J1),
        # pos1 = J0 + R0·(J1 − J0), A2 = A1·R2, A1 = R0·R1.
        g_pos1 = g_t1 + g_t2
        g_A2 = g_A2 - _outer(g_t2, J2)
        g_A1 = g_A1 - _outer(g_t1, J1) + _outer(g_t2, J2 - J1) + g_A2 @ R2.transpose(1, 2)
        a1_g = _tmv(A1, g_t2)
        r0_g = _tmv(R0, g_pos1)
        g_J = torch.stack([g_pos1 - r0_g, r0_g - a1_g - _tmv(A1, g_t1), a1_g - _tmv(A2, g_t2)], 1).view(b, 9)
        g_R0 = _outer(g_pos1, J1 - J0) + g_A1 @ R1.transpose(1, 2)
        g_R1 = R0.transpose(1, 2) @ g_A1 + g_features[:, n:n + 9].view(b, 3, 3)
        g_R2 = A1.transpose(1, 2) @ g_A2 + g_features[:, n + 9:].view(b, 3, 3)
        g_c = torch.addmm(g_features[:, :n], g_J, joint_dirs.T)
        return g_c, g_R0, g_R1, g_R2, g_trans, None, None, None
