"""FLAME tracking on a synthetic sequence of the procedural model with known parameters."""

import numpy as np
import pytest
import torch

from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.flame.procedural import write_model
from singinghead.tasks.flame_fit import fit_frames, fit_sequence, portrait_camera, project, to_camera


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    return FlameLayer(load_flame(write_model(tmp_path_factory.mktemp("flame"))), dtype=torch.float64)


def test_portrait_camera_maps_source_pixels():
    K = np.array([[1800.0, 0, 1919.5], [0, 1800.0, 1079.5], [0, 0, 1]])
    Kp = portrait_camera(K, (1400, 400, 1000), 1024)
    src = np.array([1400.0 + 250, 400.0 + 600])  # a source pixel inside the crop
    ray = np.linalg.solve(K, [*src, 1.0])
    uv = (Kp @ ray)[:2] / (Kp @ ray)[2]
    np.testing.assert_allclose(uv, (src - [1400, 400] + 0.5) * 1.024 - 0.5, atol=1e-9)


def test_tracking_recovers_a_known_sequence(layer):
    rng = np.random.default_rng(0)
    T = 48
    t = np.arange(T) / 30
    shape = torch.as_tensor(rng.normal(0, 0.5, (1, 100)))
    expr = torch.as_tensor(0.5 * np.sin(t[:, None] * np.arange(1, 51)[None, :] * 0.3))
    glob = torch.as_tensor(np.stack([0.1 * np.sin(2 * t), 0.2 * np.sin(1.3 * t), 0.05 * np.sin(t)], 1))
    jaw = torch.as_tensor(np.stack([0.2 + 0.15 * np.sin(5 * t), 0 * t, 0 * t], 1))
    trans = torch.as_tensor(np.stack([0.01 * np.sin(t), 0.005 * np.cos(t), 0.6 + 0 * t], 1))
    K = np.array([[2000.0, 0, 511.5], [0, 2000.0, 511.5], [0, 0, 1]])
    zero = torch.zeros(T, 3, dtype=torch.float64)
    with torch.no_grad():
        clean = project(to_camera(layer.landmarks(shape.repeat(T, 1), expr, glob, zero, jaw), trans),
                        torch.as_tensor(K)).numpy()
    observed = clean + rng.normal(0, 0.5, clean.shape)  # half a pixel of detector noise at 1024²

    frames = fit_frames(layer, observed, K)
    seq = fit_sequence(layer, observed, K, frames.shape.mean(0), frames)
    m = torch.as_tensor(seq.motion)
    with torch.no_grad():
        lmk = layer.landmarks(torch.as_tensor(frames.shape.mean(0))[None].repeat(T, 1), m[:, :50], m[:, 50:53],
                              m[:, 53:56], m[:, 56:59])
        fitted = project(to_camera(lmk, torch.as_tensor(seq.translation)), torch.as_tensor(K)).numpy()
    rmse = np.sqrt(((fitted - clean) ** 2).sum(-1).mean())
    assert rmse < 1.2, rmse  # px at 1024², against the noise-free landmarks
    assert np.abs(seq.motion[:, 56] - jaw[:, 0].numpy()).mean() < 0.01  # rad
    head = seq.motion[:, 50:53] + seq.motion[:, 53:56]
    assert np.abs(head - glob.numpy()).mean() < 0.02
    per_frame = np.concatenate([frames.expression, frames.global_orient, frames.jaw], 1)
    ours = np.concatenate([seq.motion[:, :53], seq.motion[:, 56:]], 1)
    assert np.abs(np.diff(ours, 2, axis=0)).mean() < 0.5 * np.abs(np.diff(per_frame, 2, axis=0)).mean()
    assert seq.motion.shape == (T, 59)
