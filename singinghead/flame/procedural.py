"""A procedural head model written in exactly the official FLAME file formats.

FLAME's licence forbids redistribution, so the demo and tests use this deterministic stand-in:
an ellipsoidal head (metres, y up, face towards +z) with FLAME's five joints (global, neck, jaw,
left eye, right eye) and kinematic tree, linear blend skinning weights whose jaw rotation opens
the mouth, 300 smooth shape and 100 localised expression components (FLAME 2020's 400 columns
of `shapedirs`), small pose correctives, a 68-point landmark embedding on plausible facial
positions (static, full and a dynamic contour table of 79 × 17), and region masks.

Files written (the loader reads them like the real ones):
- `generic_model.pkl`: dict with v_template, f, shapedirs (a chumpy array, as in the official
  file), posedirs, J_regressor (scipy.sparse csc), weights, kintree_table, J, bs_style, bs_type;
- `landmark_embedding.npy`: dict with static/dynamic/full landmark faces and barycentrics;
- `FLAME_masks.pkl`: dict region → vertex ids.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse

N_THETA, N_PHI = 48, 64  # latitude × longitude grid of the head surface
N_SHAPE, N_EXPR = 300, 100
JOINTS = np.array([
    [0.0, -0.105, -0.01],  # 0 global (root, base of the neck)
    [0.0, -0.080, -0.01],  # 1 neck
    [0.0, -0.015, 0.010],  # 2 jaw (below the ears)
    [0.032, 0.020, 0.070],  # 3 left eye
    [-0.032, 0.020, 0.070],  # 4 right eye
])
KINTREE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
#: dlib's 68 landmarks (shape_predictor_68) on a frontal photo (scikit-image's astronaut), pixels:
#: the facial proportions of the procedural head.
FRONTAL_FACE_PX = np.array(
    [[179, 104], [180, 116], [181, 127], [182, 139], [185, 150], [191, 160], [200, 168], [209, 176],
     [220, 178], [232, 177], [243, 171], [253, 163], [260, 154], [265, 143], [268, 131], [270, 120],
     [272, 108], [186, 94], [192, 88], [200, 87], [208, 89], [216, 92], [236, 93], [244, 91], [252, 91],
     [260, 92], [265, 99], [226, 102], [225, 111], [225, 119], [225, 127], [214, 131], [219, 133],
     [224, 134], [229, 133], [234, 132], [195, 101], [200, 98], [207, 98], [212, 104], [206, 104],
     [199, 104], [237, 106], [243, 100], [250, 100], [255, 105], [250, 107], [244, 107], [201, 139],
     [209, 139], [218, 139], [224, 141], [230, 140], [238, 140], [246, 141], [238, 151], [229, 155],
     [222, 156], [216, 155], [208, 150], [204, 141], [218, 143], [223, 144], [230, 143], [243, 142],
     [229, 150], [223, 151], [217, 150]],
    dtype=np.float64,
)
EYE_LINE_PX = 102.0  # row of the eye centres in that photo
LIP_LINE_PX = 146.5  # row between the lips
PX_TO_M = 0.064 / 43.0  # inter-ocular distance 43 px ↔ 64 mm
EYE_Y = 0.020  # model height of the eye centres
MOUTH_Y = EYE_Y - (LIP_LINE_PX - EYE_LINE_PX) * PX_TO_M  # the lip line: vertices below it belong to the jaw


def _surface() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, triangles and (θ, φ) of the head surface."""
    theta = np.linspace(0.02, np.pi - 0.02, N_THETA)
    phi = np.linspace(-np.pi, np.pi, N_PHI, endpoint=False)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    x = 0.078 * np.sin(th) * np.sin(ph)
    y = 0.115 * np.cos(th) - 0.005
    z = 0.095 * np.sin(th) * np.cos(ph)
    # a chin and a nose: push the lower front forward and the centre line out
    front = np.clip(np.cos(ph), 0, None)
    z = z + 0.012 * front**8 * np.exp(-((y + 0.005) / 0.02) ** 2)  # nose
    z = z + 0.008 * front**2 * np.exp(-((y + 0.075) / 0.02) ** 2)  # chin
    verts = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    faces = []
    for i in range(N_THETA - 1):
        for j in range(N_PHI):
            a, b = i * N_PHI + j, i * N_PHI + (j + 1) % N_PHI
            c, d = a + N_PHI, b + N_PHI
            faces += [[a, c, b], [b, c, d]]
    return verts, np.asarray(faces, dtype=np.int64), np.stack([th.ravel(), ph.ravel()], axis=1)


def _landmark_layout() -> np.ndarray:
    """68 points (x, y) in metres on the frontal face, dlib order: the photo's landmarks scaled to
    a 64 mm inter-ocular distance, eyes at EYE_Y, centred between the eyes (x right, y up)."""
    centre_x = 0.5 * (FRONTAL_FACE_PX[36:42, 0].mean() + FRONTAL_FACE_PX[42:48, 0].mean())
    x = (FRONTAL_FACE_PX[:, 0] - centre_x) * PX_TO_M
    y = EYE_Y - (FRONTAL_FACE_PX[:, 1] - EYE_LINE_PX) * PX_TO_M
    return np.stack([x, y], axis=1)


def _embed(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face index and barycentric coordinates of the frontal surface point under each (x, y)."""
    tri = verts[faces]
    front = tri[:, :, 2].mean(axis=1) > 0
    idx, bary = [], []
    for x, y in points:
        best = None
        for f in np.flatnonzero(front):
            (x0, y0), (x1, y1), (x2, y2) = tri[f, :, :2]
            det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
            if abs(det) < 1e-12:
                continue
            l0 = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) / det
            l1 = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) / det
            lam = np.array([l0, l1, 1 - l0 - l1])
            if (lam >= -1e-9).all() and (best is None or tri[f, :, 2].mean() > best[2]):
                best = (f, lam, tri[f, :, 2].mean())
        if best is None:
            raise ValueError(f"landmark ({x:.3f}, {y:.3f}) is not on the face")
        idx.append(best[0])
        bary.append(best[1])
    return np.asarray(idx, dtype=np.int64), np.asarray(bary)


def build_model(seed: int = 0) -> dict:
    """All arrays of the procedural model (FLAME key names and layouts)."""
    rng = np.random.default_rng(seed)
    verts, faces, angles = _surface()
    n = len(verts)
    th, ph = angles[:, 0], angles[:, 1]
    normals = verts / np.linalg.norm(verts, axis=1, keepdims=True)

    # Shape: smooth fields along the normal from low-order harmonics in (θ, φ), decaying variance.
    shapedirs = np.zeros((n, 3, N_SHAPE + N_EXPR))
    for k in range(N_SHAPE):
        order = 1 + int(np.sqrt(k))
        field = np.cos(order * th + rng.uniform(0, 2 * np.pi)) * np.cos(rng.integers(0, order + 1) * ph
                                                                            + rng.uniform(0, 2 * np.pi))
        shapedirs[:, :, k] = normals * field[:, None] * 0.004 / order
    # Expression: localised bumps around mouth, cheeks, eyes and brows with random directions.
    centres = np.array([[0, MOUTH_Y, 0.09], [0.025, MOUTH_Y, 0.085], [-0.025, MOUTH_Y, 0.085],
                        [0.03, 0.022, 0.08], [-0.03, 0.022, 0.08], [0.03, 0.042, 0.08], [-0.03, 0.042, 0.08],
                        [0.045, -0.02, 0.07], [-0.045, -0.02, 0.07]])
    for k in range(N_EXPR):
        c = centres[k % len(centres)]
        w = np.exp(-np.sum((verts - c) ** 2, axis=1) / (2 * (0.012 + 0.004 * rng.random()) ** 2))
        direction = rng.normal(size=3)
        shapedirs[:, :, N_SHAPE + k] = w[:, None] * direction / np.linalg.norm(direction) * 0.005 / (1 + k / 20)

    # Skinning: root for the neck base, neck for the head, jaw below the lip line in front.
    weights = np.zeros((n, 5))
    jaw = np.clip((MOUTH_Y - verts[:, 1]) / 0.006, 0, 1) * np.clip((verts[:, 2] - 0.0) / 0.03, 0, 1)
    jaw *= np.clip((verts[:, 1] + 0.115) / 0.02, 0, 1)  # not the neck below the chin
    root = np.clip((-0.095 - verts[:, 1]) / 0.01, 0, 1)
    weights[:, 2] = jaw * (1 - root)
    weights[:, 0] = root
    weights[:, 1] = 1 - weights[:, 0] - weights[:, 2]

    # Joint regressor: each joint = mean of the vertices nearest to it (inside the ring they form).
    rows, cols, vals = [], [], []
    for j, p in enumerate(JOINTS):
        d = np.linalg.norm(verts - p, axis=1)
        near = np.argsort(d)[:24] if j >= 3 else np.flatnonzero(np.abs(verts[:, 1] - p[1]) < 0.004)
        rows += [j] * len(near)
        cols += near.tolist()
        vals += [1.0 / len(near)] * len(near)
    J_regressor = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(5, n))
    posedirs = rng.normal(0, 2e-4, (n, 3, 36)) * np.clip(verts[:, 2:3, None] / 0.1, 0, 1)

    layout = _landmark_layout()
    lmk_faces, lmk_bary = _embed(layout, verts, faces)
    dyn_faces = np.tile(lmk_faces[None, :17], (79, 1))
    dyn_bary = np.tile(lmk_bary[None, :17], (79, 1, 1))

    def region(mask):
        return np.flatnonzero(mask).astype(np.int64)

    frontal = verts[:, 2] > 0.03
    masks = {
        "face": region(frontal & (verts[:, 1] < 0.06) & (verts[:, 1] > -0.1)),
        "lips": region(frontal & (np.hypot(verts[:, 0] / 0.03, (verts[:, 1] - MOUTH_Y) / 0.015) < 1)),
        "forehead": region(frontal & (verts[:, 1] > 0.045) & (verts[:, 1] < 0.09)),
        "eye_region": region(frontal & (np.abs(verts[:, 1] - 0.02) < 0.015) & (np.abs(verts[:, 0]) < 0.055)),
        "nose": region(frontal & (np.abs(verts[:, 0]) < 0.015) & (np.abs(verts[:, 1] + 0.0) < 0.025)),
        "neck": region(verts[:, 1] < -0.09),
        "scalp": region(verts[:, 1] > 0.09),
    }
    J = J_regressor @ verts
    return {
        "v_template": verts, "f": faces.astype(np.uint32), "shapedirs": shapedirs, "posedirs": posedirs,
        "J_regressor": J_regressor, "weights": weights, "kintree_table": KINTREE, "J": J,
        "bs_style": "lbs", "bs_type": "lrotmin",
        "embedding": {
            "static_lmk_faces_idx": lmk_faces[17:], "static_lmk_bary_coords": lmk_bary[17:],
            "dynamic_lmk_faces_idx": dyn_faces, "dynamic_lmk_bary_coords": dyn_bary,
            "full_lmk_faces_idx": lmk_faces[None], "full_lmk_bary_coords": lmk_bary[None],
        },
        "masks": masks,
    }


class _Ch:
    """Written under chumpy's name (chumpy.ch.Ch) with chumpy's state layout (`x`)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __reduce__(self):
        import copyreg

        return (copyreg._reconstructor, (type(self), object, None), {"x": self.x})


def write_model(folder: str | Path, seed: int = 0) -> Path:
    """Write generic_model.pkl, landmark_embedding.npy and FLAME_masks.pkl into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = build_model(seed)
    generic = {k: v for k, v in m.items() if k not in ("embedding", "masks")}
    generic["shapedirs"] = _Ch(m["shapedirs"])
    # Make `_Ch` picklable as chumpy.ch.Ch without chumpy installed: a module of that name exists
    # only while the file is written, so the pickle references exactly what the official one does.
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    fake = types.ModuleType("chumpy.ch")
    fake.Ch = _Ch
    _Ch.__module__, _Ch.__qualname__, _Ch.__name__ = "chumpy.ch", "Ch", "Ch"
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), fake
    try:
        with open(folder / "generic_model.pkl", "wb") as fh:
            pickle.dump(generic, fh, protocol=2)
    finally:
        _Ch.__module__, _Ch.__qualname__, _Ch.__name__ = __name__, "_Ch", "_Ch"
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    emb = np.empty((), dtype=object)
    emb[()] = m["embedding"]
    np.save(folder / "landmark_embedding.npy", emb, allow_pickle=True)
    with open(folder / "FLAME_masks.pkl", "wb") as fh:
        pickle.dump(m["masks"], fh, protocol=2)
    return folder
