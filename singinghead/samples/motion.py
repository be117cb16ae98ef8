"""A FLAME landmark sequence with known parameters: the ground truth of tracking tests and benchmarks.

A singer-like window: slow head turns and nods, a jaw that opens at syllable rate, expressions
drifting smoothly, the head about 0.6 m from a portrait camera; landmarks projected and given
half a pixel of detector noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from singinghead.flame.camera import project, to_camera
from singinghead.flame.layer import FlameLayer
from singinghead.schemas import motion as layout

PORTRAIT_K = np.array([[2000.0, 0, 511.5], [0, 2000.0, 511.5], [0, 0, 1]])


@dataclass(frozen=True)
class KnownSequence:
    shape: np.ndarray  # (100,)
    motion: np.ndarray  # (T, 59) with neck 0: the head's rotation is all in `global`
    translation: np.ndarray  # (T, 3)
    K: np.ndarray  # (3, 3)
    clean: np.ndarray  # (T, 68, 2) exact projections
    observed: np.ndarray  # (T, 68, 2) with detector noise


def known_sequence(layer: FlameLayer, frames: int = 240, seed: int = 0, noise_px: float = 0.5) -> KnownSequence:
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / layout.FPS
    shape = rng.normal(0, 0.5, layer.n_shape)
    motion = np.zeros((frames, layout.MOTION_DIM))
    motion[:, layout.EXPRESSION] = 0.5 * np.sin(t[:, None] * np.arange(1, 51)[None, :] * 0.3 + rng.uniform(0, 6, 50))
    motion[:, layout.GLOBAL_ORIENT] = np.stack([0.1 * np.sin(2 * t), 0.2 * np.sin(1.3 * t), 0.05 * np.sin(t)], 1)
    motion[:, layout.JAW.start] = 0.2 + 0.15 * np.sin(5 * t)
    translation = np.stack([0.01 * np.sin(t), 0.005 * np.cos(t), 0.6 + 0.01 * np.sin(0.5 * t)], 1)
    dt = layer.p_template.dtype
    m = torch.as_tensor(motion, dtype=dt)
    with torch.no_grad():
        lmk = layer.landmarks(torch.as_tensor(shape, dtype=dt)[None].expand(frames, -1), m[:, layout.EXPRESSION],
                              m[:, layout.GLOBAL_ORIENT], m[:, layout.NECK], m[:, layout.JAW])
        clean = project(to_camera(lmk, torch.as_tensor(translation, dtype=dt)), torch.as_tensor(PORTRAIT_K, dtype=dt))
    clean = clean.double().numpy()
    return KnownSequence(shape, motion, translation, PORTRAIT_K, clean, clean + rng.normal(0, noise_px, clean.shape))
