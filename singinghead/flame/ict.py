"""ICT Face Model Light in FLAME's file formats: the project's open, data-driven stand-in head.

FLAME's licence forbids redistribution, so without `SINGINGHEAD_FLAME_DIR` every FLAME step runs
on this head: ICT-FaceKit's light model (USC ICT, MIT licence, `assets/LICENSE.ICT-FaceKit.txt`),
whose identity modes are principal components of light-stage scans. `convert` turns ICT's arrays
into a compact file shipped in the package (`assets/ict_head.npz`, float16, < 5 MB) and
`write_model` writes that into FLAME's own files, read by the same loader as the real FLAME.

What the conversion does, and what it approximates:
- Mesh: ICT's face + head-and-neck (11,248 vertices) decimated by quadric edge collapse to about
  FLAME's size, computed on the *open-mouth* head so lips stay apart; every per-vertex field
  (neutral, modes, shapes) is resampled at the new vertices by barycentric interpolation on the
  original mesh (the fields are linear, so this is exact up to the decimation of the surface).
  Centimetres become metres; axes stay (y up, face towards +z), as in FLAME.
- Shape: the first identity modes, standard-normal weights (as ICT samples faces).
- Jaw: a hinge joint fitted to `jawOpen` (position, full-opening angle about x and per-vertex
  skinning weights in [0, 1], least squares); what the rigid hinge misses at full opening is kept
  as the jaw's pose corrective (FLAME's `posedirs`, linear in sin θ), so `jawOpen` is reproduced
  at the fitted angle and the report gives the hinge's residual without it.
- Expression: eyeBlink_L/R are the first two directions (weight 1 = closed lid), so eye closure
  is reachable and readable; the others are a PCA of the remaining shapes with the blinks
  projected out, scaled to one standard deviation per unit weight (jawOpen is the joint;
  mouthClose is a corrective of jawOpen, not a shape of its own; the pupil shapes move nothing
  on this mesh). The report gives the variance kept.
- Joints: global (neck base), neck, jaw and the two eyes, FLAME's kinematic tree; each joint is
  an affine combination of nearby vertices (the regressor), so joints follow the identity. The
  neck bends between the shoulders' base and the skull; the eyes carry no vertices (ICT's
  eyeballs are separate meshes, left out).
- Landmarks: ICT's 68 landmark vertices (dlib's order) embedded on the decimated mesh; the jaw
  contour points are fixed surface points, not a silhouette, so the dynamic contour table repeats
  them for every yaw.
- Masks: face, lips, forehead, eye_region, nose, neck, scalp, from the landmarks' geometry.

`python -m singinghead.flame.ict SOURCE OUT.npz` rebuilds the shipped file from ICT-FaceKit's own
`FaceXModel` folder of OBJ files (or the packed `ict_face_light.npz`).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import scipy.sparse

from singinghead.flame.io import write_flame_files
from singinghead.schemas.errors import AssetError

PACKAGED = Path(__file__).parent / "assets" / "ict_head.npz"
HEAD_VERTICES = 11248  # ICT's face + head-and-neck; eyes, teeth, mouth socket come after
FACE_VERTICES = 9409
N_SHAPE, N_EXPRESSION = 100, 50
TARGET_TRIANGLES = 9800
NOT_EXPRESSIONS = ("jawOpen", "mouthClose", "PupilDilate_L", "PupilDilate_R")
BLINKS = ("eyeBlink_L", "eyeBlink_R")
KINTREE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)


# --- reading ICT-FaceKit --------------------------------------------------------------------------

def _read_obj_vertices(path: Path, n: int) -> np.ndarray:
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.asarray(rows[:n], dtype=np.float64)


def _read_obj_triangles(path: Path, n: int) -> np.ndarray:
    tris = []
    for line in path.read_text().splitlines():
        if line.startswith("f "):
            idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
            if max(idx) < n:
                tris += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]  # fan
    return np.asarray(tris, dtype=np.int64)


def read_ict(source: str | Path) -> dict:
    """ICT's arrays (cm): the packed `ict_face_light.npz`, or ICT-FaceKit's `FaceXModel` folder."""
    source = Path(source)
    if source.is_file():
        with np.load(source, allow_pickle=False) as d:
            return {"neutral": d["neutral"].astype(np.float64), "triangles": d["triangles"].astype(np.int64),
                    "identity": d["identity"].astype(np.float64), "expression": d["expression"].astype(np.float64),
                    "expression_names": [str(s) for s in d["expression_names"]],
                    "landmarks_68": d["landmarks_68"].astype(np.int64)}
    neutral_obj = source / "generic_neutral_mesh.obj"
    if not neutral_obj.is_file():
        raise AssetError(f"{source}: neither ICT's packed npz nor a FaceXModel folder (no generic_neutral_mesh.obj)")
    neutral = _read_obj_vertices(neutral_obj, HEAD_VERTICES)
    ids = sorted(source.glob("identity[0-9][0-9][0-9].obj"))
    expr_files = sorted(p for p in source.glob("*.obj") if p.name != neutral_obj.name and p not in ids)
    lmk = _ict_landmarks(source.parent / "README.md")
    return {"neutral": neutral, "triangles": _read_obj_triangles(neutral_obj, HEAD_VERTICES),
            "identity": np.stack([_read_obj_vertices(p, HEAD_VERTICES) - neutral for p in ids]),
            "expression": np.stack([_read_obj_vertices(p, HEAD_VERTICES) - neutral for p in expr_files]),
            "expression_names": [p.stem for p in expr_files], "landmarks_68": lmk}


def _ict_landmarks(readme: Path) -> np.ndarray:
    """The 68 landmark vertex indices listed in ICT-FaceKit's README (iBUG order)."""
    if not readme.is_file():
        raise AssetError(f"{readme}: ICT-FaceKit's README (it lists the 68 landmark vertices) is missing")
    text = readme.read_text()
    start = text.find("68")
    numbers = [int(x) for x in re.findall(r"\b\d+\b", text[start:])]
    runs = [numbers[i:i + 68] for i in range(len(numbers) - 67) if all(n < HEAD_VERTICES for n in numbers[i:i + 68])]
    if not runs:
        raise AssetError(f"{readme}: no list of 68 landmark vertex indices found")
    return np.asarray(runs[0], dtype=np.int64)


# --- conversion -----------------------------------------------------------------------------------

def _closest(vertices: np.ndarray, triangles: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle and barycentrics of each query's closest surface point."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    hit = scene.compute_closest_points(o3d.core.Tensor(queries.astype(np.float32)))
    uv = hit["primitive_uvs"].numpy().astype(np.float64)
    return hit["primitive_ids"].numpy().astype(np.int64), np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)


def _decimate(ict: dict, target_triangles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(triangles, original triangle ids, barycentrics) of the decimated mesh's vertices."""
    jaw_open = ict["expression"][ict["expression_names"].index("jawOpen")]
    opened = ict["neutral"] + jaw_open  # lips apart: no edge collapse or resampling crosses the mouth
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(opened), o3d.utility.Vector3iVector(ict["triangles"]))
    small = mesh.simplify_quadric_decimation(target_number_of_triangles=target_triangles, boundary_weight=10.0)
    small.remove_unreferenced_vertices()
    tri, bary = _closest(opened, ict["triangles"], np.asarray(small.vertices))
    return np.asarray(small.triangles, dtype=np.int64), tri, bary


def _resample(field: np.ndarray, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(..., V, 3) per-vertex field at the new vertices."""
    return np.einsum("...vcx,vc->...vx", field[..., corners, :], bary)


def _affine_regressor(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Minimum-norm weights w (Σw = 1) with Σ w_i · points_i = target."""
    A = np.vstack([points.T, np.ones(len(points))])
    return np.linalg.lstsq(A, np.append(target, 1.0), rcond=None)[0]


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def fit_jaw(neutral: np.ndarray, jaw_open: np.ndarray, landmarks: np.ndarray) -> dict:
    """Hinge (x-axis through `centre`, angle at full opening) and skinning weights for jawOpen.

    The hinge is searched where the temporomandibular joint sits, 6–9 cm above and 7–10 cm
    behind the chin: jawOpen also moves the lips, and an unconstrained fit trades that for a
    far-away hinge (a near-translation) that opens the jaw along the wrong path in between."""
    moving = np.linalg.norm(jaw_open, axis=1) > 1e-4
    chin = neutral[landmarks[8]]
    best = None
    for angle in np.deg2rad(np.arange(4.0, 30.1, 1.0)):
        R = _rot_x(angle)
        for dy in np.arange(0.06, 0.0901, 0.005):
            for dz in np.arange(-0.10, -0.0699, 0.005):
                c = np.array([0.0, chin[1] + dy, chin[2] + dz])
                rigid = (neutral[moving] - c) @ R.T + c - neutral[moving]
                w = np.clip((rigid * jaw_open[moving]).sum(1) / np.maximum((rigid**2).sum(1), 1e-12), 0.0, 1.0)
                err = ((jaw_open[moving] - w[:, None] * rigid) ** 2).sum()
                if best is None or err < best[0]:
                    best = (err, angle, c)
    _, angle, centre = best
    R = _rot_x(angle)
    rigid = (neutral - centre) @ R.T + centre - neutral
    weights = np.where(moving, np.clip((rigid * jaw_open).sum(1) / np.maximum((rigid**2).sum(1), 1e-12), 0, 1), 0.0)
    residual = jaw_open - weights[:, None] * rigid
    return {"centre": centre, "angle": float(angle), "weights": weights, "residual": residual}


def convert(ict: dict, n_identity: int = N_SHAPE, n_expression: int = N_EXPRESSION,
            target_triangles: int = TARGET_TRIANGLES) -> dict:
    """The compact head (metres; float16 fields in mm) and a report of what it approximates."""
    triangles, tri, bary = _decimate(ict, target_triangles)
    corners = ict["triangles"][tri]
    cm = 0.01
    neutral = _resample(ict["neutral"], corners, bary) * cm
    identity = _resample(ict["identity"][:n_identity], corners, bary) * cm
    names = ict["expression_names"]
    shapes = _resample(ict["expression"], corners, bary) * cm
    n_v = len(neutral)
    face = np.isin(tri, np.flatnonzero(np.all(ict["triangles"] < FACE_VERTICES, axis=1)))

    # landmarks: the closest point of each original landmark vertex on the decimated neutral
    lmk_orig = ict["neutral"][ict["landmarks_68"]] * cm
    lmk_tri, lmk_bary = _closest(neutral, triangles, lmk_orig)
    landmarks = np.einsum("lcx,lc->lx", neutral[triangles[lmk_tri]], lmk_bary)
    nearest_vertex = triangles[lmk_tri][np.arange(68), lmk_bary.argmax(1)]

    # jaw hinge on jawOpen
    jaw_open = shapes[names.index("jawOpen")]
    jaw = fit_jaw(neutral, jaw_open, nearest_vertex)
    jaw_res = np.linalg.norm(jaw["residual"], axis=1) * 1000.0

    # expression: blinks first, then a PCA of the rest with the blinks projected out
    blinks = np.stack([shapes[names.index(b)].ravel() for b in BLINKS])
    q, _ = np.linalg.qr(blinks.T)
    others = np.stack([shapes[i].ravel() for i, n in enumerate(names) if n not in NOT_EXPRESSIONS + BLINKS])
    rest = others - (others @ q) @ q.T
    _, sv, vt = np.linalg.svd(rest, full_matrices=False)
    n_pca = min(n_expression - 2, len(sv))
    pcs = vt[:n_pca] * (sv[:n_pca] / np.sqrt(len(others)))[:, None]
    expression = np.concatenate([blinks, pcs]).reshape(-1, n_v, 3)
    total_var = (others**2).sum()
    kept = ((blinks**2).sum() + (sv[:n_pca] ** 2).sum() + ((others @ q) ** 2).sum()) / (total_var + (blinks**2).sum())

    # joints and skinning
    y = neutral[:, 1]
    eye_centres = [landmarks[36:42].mean(0), landmarks[42:48].mean(0)]
    back = np.array([0.0, 0.0, -0.012])
    neck_base = neutral[y < y.min() + 0.01].mean(0)
    neck_top = np.array([0.0, jaw["centre"][1] - 0.02, jaw["centre"][2] - 0.01])
    joints = np.stack([neck_base, neck_top, jaw["centre"], eye_centres[1] + back, eye_centres[0] + back])
    regressor = np.zeros((5, n_v))
    for j, p in enumerate(joints):
        near = np.argsort(np.linalg.norm(neutral - p, axis=1))[:40]
        if j in (1, 2):  # inside the head: vertices on both sides at the joint's height
            near = np.argsort(np.abs(neutral[:, 1] - p[1]) + np.abs(neutral[:, 2] - p[2]))[:60]
        regressor[j, near] = _affine_regressor(neutral[near], p)
    w_root = np.clip((neck_base[1] + 0.06 - y) / 0.05, 0.0, 1.0) * (~face)
    w_jaw = jaw["weights"] * (1 - w_root)
    weights = np.stack([w_root, 1 - w_root - w_jaw, w_jaw, np.zeros(n_v), np.zeros(n_v)], 1)
    # pose corrective: feature 9 + 3·2 + 1 of FLAME's pose vector is R_jaw[2, 1] = sin θ for a hinge
    corrective = jaw["residual"] / np.sin(jaw["angle"])

    masks = _masks(neutral, landmarks, face)
    report = {
        "source": "ICT-FaceKit Face Model Light (MIT)", "vertices": int(n_v), "triangles": int(len(triangles)),
        "identity_modes": int(n_identity), "expression_directions": int(len(expression)),
        "expression_variance_kept": float(kept),
        "jaw": {"angle_deg": float(np.rad2deg(jaw["angle"])), "centre_m": jaw["centre"].round(4).tolist(),
                "hinge_residual_mm": {"median": float(np.median(jaw_res[jaw_res > 0.01])),
                                      "p95": float(np.percentile(jaw_res[jaw_res > 0.01], 95)),
                                      "max": float(jaw_res.max())},
                "opening_mm_max": float(np.linalg.norm(jaw_open, axis=1).max() * 1000)},
        "landmark_embedding_mm": float(np.linalg.norm(landmarks - lmk_orig, axis=1).max() * 1000),
    }
    mm = lambda a: (np.asarray(a) * 1000.0).astype(np.float16)  # noqa: E731
    out = {"v_template": neutral.astype(np.float32), "faces": triangles.astype(np.int32),
           "shapedirs_mm": mm(identity), "exprdirs_mm": mm(expression), "jaw_corrective_mm": mm(corrective),
           "weights": weights.astype(np.float16), "joints": joints, "regressor": regressor.astype(np.float32),
           "lmk_faces_idx": lmk_tri.astype(np.int32), "lmk_bary_coords": lmk_bary.astype(np.float32),
           "report": np.array(json.dumps(report))}
    out.update({f"mask_{k}": v.astype(np.int32) for k, v in masks.items()})
    return out


def _masks(v: np.ndarray, lmk: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray]:
    front = face & (v[:, 2] > lmk[[0, 16], 2].mean() - 0.01)
    brow_y = lmk[17:27, 1].max()
    mouth = lmk[48:60]
    mouth_c = mouth.mean(0)
    half = np.ptp(mouth[:, 0]) / 2 + 0.008, np.ptp(mouth[:, 1]) / 2 + 0.008
    eyes_y = lmk[36:48, 1].mean()
    nose = lmk[27:36]
    region = lambda m: np.flatnonzero(m)  # noqa: E731
    return {
        "face": region(front),
        "lips": region(front & (np.hypot((v[:, 0] - mouth_c[0]) / half[0], (v[:, 1] - mouth_c[1]) / half[1]) < 1)),
        "forehead": region(front & (v[:, 1] > brow_y + 0.005) & (v[:, 1] < brow_y + 0.06)),
        "eye_region": region(front & (np.abs(v[:, 1] - eyes_y) < 0.018)
                             & (np.abs(v[:, 0]) < np.abs(lmk[[36, 45], 0]).max() + 0.01)),
        "nose": region(front & (np.abs(v[:, 0]) < np.ptp(nose[:, 0]) / 2 + 0.005)
                       & (v[:, 1] < nose[:, 1].max()) & (v[:, 1] > nose[:, 1].min() - 0.005)),
        "neck": region(~face & (v[:, 1] < lmk[8, 1] - 0.01)),
        "scalp": region(~face & (v[:, 1] > brow_y + 0.02)),
    }


# --- FLAME files ----------------------------------------------------------------------------------

def load_compact(path: str | Path = PACKAGED) -> dict:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def report(path: str | Path = PACKAGED) -> dict:
    return json.loads(str(load_compact(path)["report"]))


def write_model(folder: str | Path, compact: str | Path = PACKAGED) -> Path:
    """generic_model.pkl, landmark_embedding.npy and FLAME_masks.pkl of the ICT head in `folder`."""
    c = load_compact(compact)
    v = c["v_template"].astype(np.float64)
    n_v = len(v)
    dirs = np.zeros((n_v, 3, 300 + 100))  # FLAME 2020's layout: 300 shape columns, then 100 expression
    ident = c["shapedirs_mm"].astype(np.float64) / 1000.0
    expr = c["exprdirs_mm"].astype(np.float64) / 1000.0
    dirs[:, :, :len(ident)] = ident.transpose(1, 2, 0)
    dirs[:, :, 300:300 + len(expr)] = expr.transpose(1, 2, 0)
    posedirs = np.zeros((n_v, 3, 36))
    posedirs[:, :, 9 + 3 * 2 + 1] = c["jaw_corrective_mm"].astype(np.float64) / 1000.0
    regressor = c["regressor"].astype(np.float64)
    weights = c["weights"].astype(np.float64)
    weights[:, 1] = 1.0 - weights[:, [0, 2, 3, 4]].sum(1)  # the head follows the neck: rows sum to 1 exactly
    lmk_faces = c["lmk_faces_idx"].astype(np.int64)
    lmk_bary = c["lmk_bary_coords"].astype(np.float64)
    generic = {
        "v_template": v, "f": c["faces"].astype(np.uint32), "shapedirs": dirs, "posedirs": posedirs,
        "J_regressor": scipy.sparse.csc_matrix(regressor), "weights": weights,
        "kintree_table": KINTREE, "J": regressor @ v, "bs_style": "lbs", "bs_type": "lrotmin",
    }
    embedding = {
        "static_lmk_faces_idx": lmk_faces[17:], "static_lmk_bary_coords": lmk_bary[17:],
        "dynamic_lmk_faces_idx": np.tile(lmk_faces[None, :17], (79, 1)),
        "dynamic_lmk_bary_coords": np.tile(lmk_bary[None, :17], (79, 1, 1)),
        "full_lmk_faces_idx": lmk_faces[None], "full_lmk_bary_coords": lmk_bary[None],
    }
    masks = {k[5:]: c[k].astype(np.int64) for k in c if k.startswith("mask_")}
    return write_flame_files(folder, generic, embedding, masks)


def main(argv: list[str] | None = None) -> None:
    """`python -m singinghead.flame.ict SOURCE OUT.npz`: convert ICT-FaceKit into the compact head."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m singinghead.flame.ict ICT_SOURCE(FaceXModel folder or npz) OUT.npz")
    out = convert(read_ict(args[0]))
    np.savez_compressed(args[1], **out)
    print(json.dumps(json.loads(str(out["report"])), indent=1))


if __name__ == "__main__":
    main()
