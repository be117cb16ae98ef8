"""Depth rendering of FLAME meshes with a pinhole camera, on CPU: a vectorised z-buffer in torch.

Every triangle is projected; the pixels of its bounding box (a k×k grid, triangles grouped by
box size in powers of two so small ones stay cheap) are tested with screen-space barycentric
coordinates, depth is interpolated perspective-correctly (1/z is linear on screen), and the
nearest triangle wins per pixel via `scatter_reduce(amin)`. Pixel centres are at integer
coordinates (OpenCV's convention, as the portrait camera). Background depth is 0.
"""

from __future__ import annotations

import torch

from singinghead.flame.camera import to_camera
from singinghead.schemas import motion as layout


def rasterize_depth(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int, width: int
                    ) -> torch.Tensor:
    """(V, 3) camera-space vertices (x right, y down, z forward, metres) → (H, W) depth."""
    z = verts[:, 2]
    uv = verts[:, :2] / z[:, None] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    tri = uv[faces]  # (F, 3, 2)
    tz = z[faces]  # (F, 3)
    keep = (tz > 1e-6).all(1)
    lo = tri.amin(1).floor().clamp(min=0)
    hi = torch.minimum(tri.amax(1).ceil(), torch.tensor([width - 1, height - 1], dtype=tri.dtype, device=tri.device))
    keep &= (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < width) & (lo[:, 1] < height)
    tri, tz, lo, hi = tri[keep], tz[keep], lo[keep], hi[keep]
    depth = torch.full((height * width,), float("inf"), dtype=verts.dtype, device=verts.device)
    size = (hi - lo).amax(1) + 1
    k = 2
    while len(size) and k // 2 < int(size.max().item()) + 1:
        group = (size <= k) & (size > k // 2) if k > 2 else size <= k
        if group.any():
            depth = _raster(tri[group], tz[group], lo[group], hi[group], k, depth, height, width)
        k *= 2
    depth[torch.isinf(depth)] = 0
    return depth.view(height, width)


def _raster(tri, tz, lo, hi, k: int, depth, height: int, width: int) -> torch.Tensor:
    """Triangles whose boxes fit in k×k pixels, into the flat z-buffer `depth`."""
    dev, dt = tri.device, tri.dtype
    grid = torch.stack(torch.meshgrid(torch.arange(k, device=dev), torch.arange(k, device=dev), indexing="xy"),
                       -1).reshape(-1, 2).to(dt)  # (k², 2) as (dx, dy)
    px = lo[:, None, :] + grid[None]  # (F, k², 2)
    a, b, c = tri[:, 0, None], tri[:, 1, None], tri[:, 2, None]
    area = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    w0 = ((b[..., 0] - px[..., 0]) * (c[..., 1] - px[..., 1]) - (b[..., 1] - px[..., 1]) * (c[..., 0] - px[..., 0]))
    w1 = ((c[..., 0] - px[..., 0]) * (a[..., 1] - px[..., 1]) - (c[..., 1] - px[..., 1]) * (a[..., 0] - px[..., 0]))
    w0, w1 = w0 / area, w1 / area
    w2 = 1 - w0 - w1
    inside = (w0 >= -1e-7) & (w1 >= -1e-7) & (w2 >= -1e-7) & (area.abs() > 1e-12)
    inside &= (px[..., 0] <= hi[:, None, 0]) & (px[..., 1] <= hi[:, None, 1])
    inside &= (px[..., 0] < width) & (px[..., 1] < height)
    inv_z = w0 * (1 / tz[:, 0, None]) + w1 * (1 / tz[:, 1, None]) + w2 * (1 / tz[:, 2, None])
    idx = (px[..., 1][inside] * width + px[..., 0][inside]).long()
    return depth.scatter_reduce(0, idx, 1 / inv_z[inside], reduce="amin", include_self=True)


def render_depth_sequence(layer, shape: torch.Tensor, motion: torch.Tensor, translation: torch.Tensor,
                          camera: torch.Tensor, size: int) -> torch.Tensor:
    """(T, size, size) depth of a fitted FLAME sequence: motion (T, 59), translation (T, 3) and the
    segment camera (fx, fy, cx, cy) of the 1024² portrait, rescaled to `size`."""
    m = motion
    verts = layer(shape[None].expand(len(m), -1), m[:, layout.EXPRESSION], m[:, layout.GLOBAL_ORIENT],
                  m[:, layout.NECK], m[:, layout.JAW])[0]
    cam = to_camera(verts, translation)
    s = size / 1024.0
    fx, fy, cx, cy = camera.tolist()
    K = torch.tensor([[fx * s, 0, (cx + 0.5) * s - 0.5], [0, fy * s, (cy + 0.5) * s - 0.5], [0, 0, 1]],
                     dtype=cam.dtype, device=cam.device)
    return torch.stack([rasterize_depth(v, layer.faces, K, size, size) for v in cam])
