"""FLAME as a torch layer: full mesh, or only what the 68 landmarks need.

The full path is smplx's linear blend skinning (`smplx.lbs.lbs`). The landmark-only path skins
just the vertices of the triangles the landmarks sit on (≈ 200 of 5023), with the joints from
precomputed J_regressor products, and the shape folded into the template when it is fixed (the
sequence fits: one subject, many frames). Both give the same landmarks (tested to 1e-5).
Rotations are axis-angle, converted with roma. Pose order (FLAME): global, neck, jaw, eyes.
"""

from __future__ import annotations

import numpy as np
import roma
import torch
from smplx.lbs import batch_rigid_transform, lbs, vertices2landmarks
from torch import nn

from singinghead.flame.model import FlameModel


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

        # Landmark-only path: the vertices under the landmarks, and the joints' linear maps.
        used, remap = np.unique(model.faces[model.lmk_faces_idx].reshape(-1), return_inverse=True)
        n_v = len(model.v_template)
        self.register_buffer("lmk_local_faces", torch.as_tensor(remap.reshape(-1, 3), dtype=torch.long))
        self.register_buffer("u_template", t(model.v_template[used]))
        self.register_buffer("u_shapedirs", t(dirs[used]))
        posedirs = model.posedirs.reshape(n_v, 3, -1)[used]  # (U, 3, 36)
        self.register_buffer("u_posedirs", t(posedirs.reshape(-1, posedirs.shape[2]).T))
        self.register_buffer("u_weights", t(model.weights[used]))
        self.register_buffer("j_template", t(model.J_regressor @ model.v_template))  # (5, 3)
        self.register_buffer("j_shapedirs", t(np.einsum("jv,vck->jck", model.J_regressor, dirs)))  # (5, 3, K)
        self.folded: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def pose(global_orient, neck, jaw, eyes=None) -> torch.Tensor:
        eyes = torch.zeros(global_orient.shape[0], 6, dtype=global_orient.dtype, device=global_orient.device) \
            if eyes is None else eyes
        return torch.cat([global_orient, neck, jaw, eyes], dim=1)

    def forward(self, shape, expression, global_orient, neck, jaw, eyes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertices (B, V, 3), landmarks (B, 68, 3)) in metres, model space."""
        betas = torch.cat([shape, expression], dim=1)
        verts, _ = lbs(betas, self.pose(global_orient, neck, jaw, eyes), self.v_template, self.shapedirs,
                       self.posedirs, self.J_regressor, self.parents, self.weights)
        b = verts.shape[0]
        lmk = vertices2landmarks(verts, self.faces, self.lmk_faces_idx.repeat(b, 1),
                                 self.lmk_bary.repeat(b, 1, 1))
        return verts, lmk

    def fold_shape(self, shape: torch.Tensor | None) -> None:
        """Fix the subject's shape (1, n_shape): its offsets join the landmark path's template."""
        if shape is None:
            self.folded = None
            return
        s = self.u_shapedirs[:, :, : self.n_shape]
        js = self.j_shapedirs[:, :, : self.n_shape]
        self.folded = (self.u_template + torch.einsum("uck,k->uc", s, shape[0]),
                       self.j_template + torch.einsum("jck,k->jc", js, shape[0]))

    def landmarks(self, shape, expression, global_orient, neck, jaw, eyes=None) -> torch.Tensor:
        """(B, 68, 3) landmarks, skinning only the vertices they touch. `shape` may be None
        when it has been folded with `fold_shape`."""
        b = expression.shape[0]
        exp_dirs = self.u_shapedirs[:, :, self.n_shape:]
        exp_j = self.j_shapedirs[:, :, self.n_shape:]
        if shape is None:
            if self.folded is None:
                raise ValueError("landmarks(shape=None) needs fold_shape(shape) first")
            v = self.folded[0] + torch.einsum("uck,bk->buc", exp_dirs, expression)
            joints = self.folded[1] + torch.einsum("jck,bk->bjc", exp_j, expression)
        else:
            betas = torch.cat([shape, expression], dim=1)
            v = self.u_template + torch.einsum("uck,bk->buc", self.u_shapedirs, betas)
            joints = self.j_template + torch.einsum("jck,bk->bjc", self.j_shapedirs, betas)
        rot = roma.rotvec_to_rotmat(self.pose(global_orient, neck, jaw, eyes).view(b, -1, 3))  # (B, 5, 3, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(b, -1)
        v = v + (pose_feature @ self.u_posedirs).view(b, -1, 3)
        _, rel = batch_rigid_transform(rot, joints, self.parents, dtype=rot.dtype)
        T = torch.einsum("uj,bjmn->bumn", self.u_weights, rel)
        v = torch.einsum("bumn,bun->bum", T[:, :, :3, :3], v) + T[:, :, :3, 3]
        tri = v[:, self.lmk_local_faces]  # (B, 68, 3 corners, 3)
        return torch.einsum("blcd,lc->bld", tri, self.lmk_bary)
