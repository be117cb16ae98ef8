"""FLAME as a torch layer: full mesh, or only what the 68 landmarks need.

The full path is smplx's linear blend skinning (`smplx.lbs.lbs`). The landmark-only path uses
that skinning is linear: each landmark is a sum over the five joints of the joint's transform
applied to a precomputed per-landmark, per-joint blend of the vertices it sits on, so one frame
costs a few small matrix products instead of skinning 5023 vertices; joints come from
precomputed J_regressor products, and the shape is folded into the template when it is fixed
(the sequence fits: one subject, many frames). Both give the same landmarks (tested to 1e-5).
Rotations are axis-angle (`rotvec_to_rotmat`, checked against roma's). Pose order (FLAME): global,
neck, jaw, eyes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from smplx.lbs import lbs, vertices2landmarks
from torch import nn

from singinghead.flame.model import FlameModel


def _quaternion_basis() -> torch.Tensor:
    """(16, 9): the rotation matrix of a unit quaternion q = (x, y, z, w) is (q ⊗ q) @ this
    (each entry of R is a quadratic form in q, e.g. R00 = x² − y² − z² + w², R01 = 2(xy − zw))."""
    x, y, z, w = range(4)
    terms = {(0, 0): [(x, x, 1), (y, y, -1), (z, z, -1), (w, w, 1)],
             (1, 1): [(x, x, -1), (y, y, 1), (z, z, -1), (w, w, 1)],
             (2, 2): [(x, x, -1), (y, y, -1), (z, z, 1), (w, w, 1)],
             (0, 1): [(x, y, 2), (z, w, -2)], (1, 0): [(x, y, 2), (z, w, 2)],
             (0, 2): [(x, z, 2), (y, w, 2)], (2, 0): [(x, z, 2), (y, w, -2)],
             (1, 2): [(y, z, 2), (x, w, -2)], (2, 1): [(y, z, 2), (x, w, 2)]}
    basis = torch.zeros(4, 4, 9, dtype=torch.float64)
    for (row, col), products in terms.items():
        for a, b, sign in products:
            basis[a, b, row * 3 + col] += sign / 2  # split over (a, b) and (b, a): q ⊗ q is symmetric
            basis[b, a, row * 3 + col] += sign / 2
    return basis.reshape(16, 9)


_QUATERNION_BASIS = _quaternion_basis()


def rotvec_to_rotmat(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) → rotation matrices (..., 3, 3): the unit quaternion (sinc(θ/2)·r/2,
    cos(θ/2)), smooth at θ = 0 in value and gradient, then its rotation matrix as one product.
    Equal to roma.rotvec_to_rotmat to float precision, gradients included (tests/test_flame.py).
    Our own because importing roma imports torch._dynamo (5.6 s of CPU here), which every Dask
    worker paid at its first FLAME fit; it is also 8 ops against roma's ~50 (99 × 3 rotations
    forward and back: 0.5 ms against 1.0; inside a whole fit step the difference is lost in noise)."""
    theta = torch.linalg.vector_norm(rotvec, dim=-1, keepdim=True)
    half = theta * 0.5
    q = torch.cat([rotvec * (torch.sinc(half * (1 / math.pi)) * 0.5), torch.cos(half)], -1).reshape(-1, 4)
    outer = (q[:, :, None] * q[:, None, :]).reshape(-1, 16)
    return (outer @ _QUATERNION_BASIS.to(q)).view(*rotvec.shape[:-1], 3, 3)


class FlameLayer(nn.Module):
    def __init__(self, model: FlameModel, n_shape: int = 100, n_expression: int = 50, dtype=torch.float32):
        super().__init__()
        self.n_shape, self.n_expression = n_shape, n_expression
        n_max = model.n_shape_max
        dirs = np.concatenate([model.shapedirs[:, :, :n_shape], model.shapedirs[:, :, n_max:n_max + n_expression]],
                              axis=2)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
        self.register_buffer("v_template", t(model.v_template))
        self.register_buffer("shapedirs", t(dirs))
        self.register_buffer("posedirs", t(model.posedirs.reshape(-1, model.posedirs.shape[2]).T))  # (36, V*3)
        self.register_buffer("J_regressor", t(model.J_regressor))
        self.register_buffer("weights", t(model.weights))
        self.register_buffer("faces", torch.as_tensor(model.faces, dtype=torch.long))
        self.register_buffer("parents", torch.as_tensor(model.parents, dtype=torch.long))
        self.register_buffer("lmk_faces_idx", torch.as_tensor(model.lmk_faces_idx, dtype=torch.long))
        self.register_buffer("lmk_bary", t(model.lmk_bary_coords))

        # Landmark-only path. Skinning is linear in the unposed vertices, so each landmark l is
        #   Σ_j R_j·P_lj + W_lj·t_j,  P_lj = Σ_c bary_lc·w_(u_lc, j)·v_(u_lc),  W_lj = Σ_c bary_lc·w_(u_lc, j)
        # (R_j, t_j the joints' world transforms relative to rest; j over the joints that move any
        # landmark). P is linear in shape, expression and the pose correctives, so its template and
        # bases are precomputed; rows are (landmark, joint, xyz) and the batch is the last axis.
        corners = model.faces[model.lmk_faces_idx]  # (68, 3)
        wb = model.weights[corners] * model.lmk_bary_coords[:, :, None]  # (68, 3 corners, 5 joints)
        moving = np.flatnonzero(np.abs(wb).sum((0, 1)) > 0)
        wb = wb[:, :, moving]
        per = lambda a: np.einsum("lcj,lc...->lj...", wb, a[corners]).reshape(-1, *a.shape[2:])  # noqa: E731
        n_v = len(model.v_template)
        self.register_buffer("lmk_joints", torch.as_tensor(moving, dtype=torch.long))
        self.n_joints_needed = int(moving.max()) + 1  # joints are ordered parents first
        self.register_buffer("p_template", t(per(model.v_template)[:, None]))  # (68·J·3, 1)
        self.register_buffer("p_dirs", t(per(dirs)))  # (68·J·3, K)
        self.register_buffer("p_posedirs", t(per(model.posedirs.reshape(n_v, 3, -1))))  # (68·J·3, 36)
        self.register_buffer("lmk_joint_weights", t(wb.sum(1)))  # (68, J)
        self.register_buffer("j_template", t(model.J_regressor @ model.v_template))  # (5, 3)
        j_dirs = np.einsum("jv,vck->jck", model.J_regressor, dirs)
        self.register_buffer("j_dirs", t(j_dirs.reshape(-1, dirs.shape[2]).T))  # (K, 5·3)
        self.folded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def pose(global_orient, neck, jaw, eyes=None) -> torch.Tensor:
        eyes = torch.zeros(global_orient.shape[0], 6, dtype=global_orient.dtype, device=global_orient.device) \
            if eyes is None else eyes
        return torch.cat([global_orient, neck, jaw, eyes], dim=1)

    def forward(self, shape, expression, global_orient, neck, jaw, eyes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertices (B, V, 3), landmarks (B, 68, 3)) in metres, model space. `shape` may be None
        when it has been folded with `fold_shape` (the shaped template is then blended once)."""
        if shape is None:
            if self.folded is None:
                raise ValueError("forward(shape=None) needs fold_shape(shape) first")
            template, dirs, betas = self.folded[2], self.shapedirs[:, :, self.n_shape:], expression
        else:
            template, dirs, betas = self.v_template, self.shapedirs, torch.cat([shape, expression], dim=1)
        verts, _ = lbs(betas, self.pose(global_orient, neck, jaw, eyes), template, dirs,
                       self.posedirs, self.J_regressor, self.parents, self.weights)
        b = verts.shape[0]
        lmk = vertices2landmarks(verts, self.faces, self.lmk_faces_idx.repeat(b, 1),
                                 self.lmk_bary.repeat(b, 1, 1))
        return verts, lmk

    def vertices(self, shape, expression, global_orient, neck, jaw, subset: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """(B, V or len(subset), 3) posed vertices, skinning only `subset` (e.g. a FLAME mask) when
        given: the joints come from the precomputed regressor products, as in `landmarks`. With a
        subset, `shape` may also hold one row per sequence of B / len(shape) consecutive frames
        (the trainer's mesh loss): each sequence's shape is blended once, not once per frame.

        The subset is blended and skinned coordinate-major, (B, xyz, vertex): every product then
        runs along the vertices. Vertex-major, the trainer's skinning (480 frames × 2,433 face
        vertices) spent 180 ms a step in products whose inner dimension was 3, now 70 ms; its
        200-step overfitting run takes 116 core-s against 156."""
        if subset is None:
            return self(shape, expression, global_orient, neck, jaw)[0]
        b, n, n_v = expression.shape[0], self.n_shape, self.v_template.shape[0]
        per_sequence = b // shape.shape[0]
        if per_sequence * shape.shape[0] != b:
            raise ValueError(f"{b} frames do not split into {shape.shape[0]} sequences")
        size = len(subset)
        dirs = self.shapedirs[subset].permute(1, 0, 2).reshape(3 * size, -1)  # rows (xyz, vertex)
        shaped = torch.addmm(self.v_template[subset].T.flatten(), shape, dirs[:, :n].T)
        v = torch.addmm(shaped.repeat_interleave(per_sequence, 0), expression, dirs[:, n:].T)
        shaped_joints = torch.addmm(self.j_template.flatten(), shape, self.j_dirs[:n])
        joints = torch.addmm(shaped_joints.repeat_interleave(per_sequence, 0), expression, self.j_dirs[n:])
        rot = rotvec_to_rotmat(self.pose(global_orient, neck, jaw).view(b, -1, 3))
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        posedirs = self.posedirs.view(-1, n_v, 3)[:, subset].transpose(1, 2).reshape(self.posedirs.shape[0], -1)
        v = torch.addmm(v, (rot[:, 1:] - eye).reshape(b, -1), posedirs).view(b, 3, size)
        r, t = self.chain(rot, joints.view(b, -1, 3), rot.shape[1])  # (B, 5, 3, 3), (B, 5, 3)
        w = self.weights[subset]  # (S, 5)
        moving = torch.nonzero(w.abs().sum(0)).flatten()  # the face: neck and jaw only
        r, t, w = r[:, moving], t[:, moving], w[:, moving].T.contiguous()  # w: (J, S)
        # Every vertex through each moving joint's rotation in one product, then their weighted
        # sum: cheaper than blending a 3×3 matrix per vertex first (and its backward).
        turned = torch.bmm(r.reshape(b, -1, 3), v).view(b, len(moving), 3, size)
        skinned = (turned * w[:, None]).sum(1) + t.transpose(1, 2) @ w  # (B, 3, S)
        return skinned.transpose(1, 2)

    def fold_shape(self, shape: torch.Tensor | None) -> None:
        """Fix the subject's shape (1, n_shape): its offsets join the landmark path's template and
        the full mesh's template (both paths then blend only the expression)."""
        if shape is None:
            self.folded = None
            return
        n = self.n_shape
        self.folded = (self.p_template + self.p_dirs[:, :n] @ shape[0][:, None],
                       self.j_template.flatten() + shape[0] @ self.j_dirs[:n],
                       self.v_template + torch.einsum("vck,k->vc", self.shapedirs[:, :, :n], shape[0]))

    def chain(self, rot: torch.Tensor, joints: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations (B, n, 3, 3) and translations (B, n, 3) of joints 0…n−1 relative to the rest
        pose: the kinematic chain of smplx's `batch_rigid_transform`, without its 4×4 padding.
        Joints are ordered parents first, as in FLAME."""
        rot_w: list[torch.Tensor] = []
        pos_w: list[torch.Tensor] = []
        for j in range(n):
            p = int(self.parents[j])
            if p < 0:
                rot_w.append(rot[:, j])
                pos_w.append(joints[:, j])
            else:
                rot_w.append(rot_w[p] @ rot[:, j])
                pos_w.append(pos_w[p] + (rot_w[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
        r = torch.stack(rot_w, 1)
        return r, torch.stack(pos_w, 1) - (r @ joints[:, :n, :, None])[..., 0]

    def world_transforms(self, rot: torch.Tensor, joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`chain` for the joints that move landmarks only."""
        r, t = self.chain(rot, joints, self.n_joints_needed)
        return r[:, self.lmk_joints], t[:, self.lmk_joints]

    def landmarks(self, shape, expression, global_orient, neck, jaw, eyes=None) -> torch.Tensor:
        """(B, 68, 3) landmarks from the precomputed per-landmark products (no mesh). `shape` may be
        None when it has been folded with `fold_shape`."""
        b = expression.shape[0]
        n = self.n_shape
        if shape is None:
            if self.folded is None:
                raise ValueError("landmarks(shape=None) needs fold_shape(shape) first")
            p = torch.addmm(self.folded[0], self.p_dirs[:, n:], expression.T)
            joints = torch.addmm(self.folded[1], expression, self.j_dirs[n:])
        else:
            betas = torch.cat([shape, expression], dim=1)
            p = torch.addmm(self.p_template, self.p_dirs, betas.T)
            joints = torch.addmm(self.j_template.flatten(), betas, self.j_dirs)
        # Closed eyes-in-head rotations (None) are the identity: no pose correctives, no rotation.
        pose = torch.stack([global_orient, neck, jaw] + ([] if eyes is None else [eyes[:, :3], eyes[:, 3:]]), 1)
        rot = rotvec_to_rotmat(pose)  # (B, 3 or 5, 3, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        n_feat = (rot.shape[1] - 1) * 9
        p = p + self.p_posedirs[:, :n_feat] @ (rot[:, 1:] - eye).reshape(b, -1).T  # (68·J·3, B)
        if rot.shape[1] < self.n_joints_needed:
            rot = torch.cat([rot, eye.expand(b, self.n_joints_needed - rot.shape[1], 3, 3)], 1)
        rot_w, trans_w = self.world_transforms(rot, joints.view(b, -1, 3))
        n_j = len(self.lmk_joints)
        # Batch last: the broadcast products then run over contiguous memory (small batched
        # matmuls are slow on CPU, and their backward loops over the batch).
        r = rot_w.permute(1, 3, 2, 0).reshape(n_j * 3, 3, b)  # (J·n, m, B) = R_j[m, n]
        p = p.view(-1, n_j * 3, b)
        skinned = torch.stack([(p * r[:, m]).sum(1) for m in range(3)], 1)  # (68, 3, B)
        shift = (self.lmk_joint_weights @ trans_w.permute(1, 2, 0).reshape(n_j, -1)).view(-1, 3, b)
        return (skinned + shift).permute(2, 0, 1)
