"""Depth rendering against analytic depth."""

import numpy as np
import pytest
import torch

from singinghead.trainer.render import rasterize_depth

K = torch.tensor([[200.0, 0, 63.5], [0, 200.0, 63.5], [0, 0, 1]], dtype=torch.float64)


def _plane(z_of_xy, extent=0.5, n=8):
    xs = np.linspace(-extent, extent, n + 1)
    verts, faces = [], []
    for y in xs:
        for x in xs:
            verts.append([x, y, z_of_xy(x, y)])
    for i in range(n):
        for j in range(n):
            a = i * (n + 1) + j
            faces += [[a, a + 1, a + n + 1], [a + 1, a + n + 2, a + n + 1]]
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces)


def test_tilted_plane_depth_is_exact():
    verts, faces = _plane(lambda x, y: 2.0 + 0.5 * x)  # z = 2 + x/2: a plane seen at an angle
    depth = rasterize_depth(verts, faces, K, 128, 128).numpy()
    v, u = np.mgrid[0:128, 0:128]
    rx, ry = (u - 63.5) / 200.0, (v - 63.5) / 200.0  # ray (rx, ry, 1)·t meets z = 2 + x/2 at t = 2 / (1 − rx/2)
    analytic = 2.0 / (1 - 0.5 * rx)
    x_hit, y_hit = rx * analytic, ry * analytic
    inside = (np.abs(x_hit) < 0.49) & (np.abs(y_hit) < 0.49)
    assert inside.sum() > 2000
    np.testing.assert_allclose(depth[inside], analytic[inside], atol=1e-9)
    assert (depth[(np.abs(x_hit) > 0.51) | (np.abs(y_hit) > 0.51)] == 0).all()


def test_nearest_surface_wins():
    near, faces = _plane(lambda x, y: 1.5, extent=0.1, n=2)
    far, _ = _plane(lambda x, y: 3.0, extent=0.5, n=2)
    verts = torch.cat([far, near])
    all_faces = torch.cat([faces, faces + len(far)])
    depth = rasterize_depth(verts, all_faces, K, 128, 128)
    assert depth[64, 64] == 1.5 and depth[40, 64] == 3.0 and depth[0, 0] == 0.0


def test_sphere_depth_matches_analytic():
    n_t, n_p = 40, 80
    th, ph = np.meshgrid(np.linspace(0, np.pi, n_t), np.linspace(0, 2 * np.pi, n_p, endpoint=False), indexing="ij")
    r, d = 0.2, 1.0
    pts = np.stack([r * np.sin(th) * np.cos(ph), r * np.sin(th) * np.sin(ph), d + r * np.cos(th)], -1).reshape(-1, 3)
    faces = []
    for i in range(n_t - 1):
        for j in range(n_p):
            a, b = i * n_p + j, i * n_p + (j + 1) % n_p
            faces += [[a, b, a + n_p], [b, b + n_p, a + n_p]]
    depth = rasterize_depth(torch.tensor(pts), torch.tensor(faces), K, 128, 128).numpy()
    v, u = np.mgrid[0:128, 0:128]
    ray = np.stack([(u - 63.5) / 200.0, (v - 63.5) / 200.0, np.ones_like(u, float)], -1)
    # nearest intersection of t·ray with the sphere |p − (0, 0, d)| = r
    a = (ray**2).sum(-1)
    b = -2 * d * ray[..., 2]
    disc = b**2 - 4 * a * (d * d - r * r)
    hit = disc > 0.05 * disc.max()  # away from the silhouette, where tessellation dominates
    t = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
    analytic = t * ray[..., 2]
    assert np.abs(depth[hit] - analytic[hit]).max() < 2e-3  # metres: within the tessellation's sag


def test_flame_sequence_depth(tmp_path):
    from singinghead.flame.ict import write_model
    from singinghead.flame.layer import FlameLayer
    from singinghead.flame.model import load_flame
    from singinghead.trainer.render import render_depth_sequence

    layer = FlameLayer(load_flame(write_model(tmp_path)), dtype=torch.float64)
    motion = torch.zeros(2, 59, dtype=torch.float64)
    motion[1, 56] = 0.4  # open jaw in frame 1
    translation = torch.tensor([[0.0, 0.0, 0.6], [0.0, 0.0, 0.6]], dtype=torch.float64)
    depth = render_depth_sequence(layer, torch.zeros(100, dtype=torch.float64), motion, translation,
                                  torch.tensor([2000.0, 2000.0, 511.5, 511.5]), 256)
    assert depth.shape == (2, 256, 256)
    # the nearest point of the head, straight ahead: camera distance minus the face's reach (the nose tip)
    front = layer.v_template[:, 2].max().item()
    assert float(depth[0][depth[0] > 0].min()) == pytest.approx(0.6 - front, abs=2e-3)
    assert 0.1 < float((depth[0] > 0).float().mean()) < 0.9  # a head in the frame, background around
    assert (depth[0] != depth[1]).any()  # the jaw moved
