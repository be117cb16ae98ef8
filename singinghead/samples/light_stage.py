"""A rendered light stage: 51 calibrated photos of a known head, for the scan tests and the demo.

The head is the stand-in FLAME model (the ICT head) with a known shape (neutral expression and pose), so the
scan, its landmarks and the fitted shape can be checked against ground truth. Its albedo is a
function of the surface point (the same in every view, as photogrammetry needs): the sample
face photo projected from the front onto the face, over a fine speckle pattern of the kind
light stages project for texture-poor skin. Lighting is fixed in the world (uniform light
stage with a soft key light), so shading does not change between views. Each view is
ray-cast with open3d (Embree, CPU) through the calibrated camera, lens distortion included,
and written as a JPEG; `calibration.json` holds the rig in the documented JSON form.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
from scipy import ndimage

from singinghead.capture_rigs.scan_files import HeadScan
from singinghead.flame.model import FlameModel
from singinghead.samples.real_scan import placed
from singinghead.samples.video import SOURCE_LANDMARKS, source_image

#: Dome rings (elevation in degrees, number of cameras): 51 views around the head.
RINGS = ((-30.0, 11), (-5.0, 14), (20.0, 13), (45.0, 9), (72.0, 4))
WIDTH, HEIGHT = 512, 640
FOCAL_PX = 2000.0
DOME_RADIUS_M = 1.0
DISTORTION = (-0.04, 0.02, 0.0, 0.0)  # OpenCV k1, k2, p1, p2
HEAD_CENTRE = np.array([0.0, -0.005, 0.0])


def dome_cameras() -> list[dict]:
    """Camera id, intrinsics and world→camera pose (OpenCV axes) of every view on the dome."""
    cams = []
    for elevation, count in RINGS:
        for i in range(count):
            azimuth = np.deg2rad(360.0 * i / count)
            el = np.deg2rad(elevation)
            centre = HEAD_CENTRE + DOME_RADIUS_M * np.array(
                [np.cos(el) * np.sin(azimuth), np.sin(el), np.cos(el) * np.cos(azimuth)])
            z = HEAD_CENTRE - centre
            z /= np.linalg.norm(z)
            down = np.array([0.0, -1.0, 0.0])
            y = down - z * (down @ z)
            if np.linalg.norm(y) < 1e-6:
                y = np.array([0.0, 0.0, 1.0])
            y /= np.linalg.norm(y)
            x = np.cross(y, z)
            R = np.stack([x, y, z])
            cams.append({
                "id": f"cam{len(cams):02d}", "image": f"cam{len(cams):02d}.jpg", "width": WIDTH, "height": HEIGHT,
                "fx": FOCAL_PX, "fy": FOCAL_PX, "cx": WIDTH / 2 - 0.5, "cy": HEIGHT / 2 - 0.5,
                "distortion": list(DISTORTION), "R": R.tolist(), "t": (-R @ centre).tolist(),
            })
    return cams


def head_mesh(model: FlameModel, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neutral head of the given shape (metres): template plus shape blend shapes, no pose."""
    dirs = model.shapedirs[:, :, : len(shape)]
    return model.v_template + dirs @ shape, np.asarray(model.faces, dtype=np.int64)


def _speckle(points: np.ndarray, seed: int = 7) -> np.ndarray:
    """A band-limited random pattern in 3D (sum of plane waves, 3–12 mm periods), in [0, 1]."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(48, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freq = 2 * np.pi / rng.uniform(0.003, 0.012, 48)
    phase = rng.uniform(0, 2 * np.pi, 48)
    # float32: NumPy's vectorised cosine, ~9× faster; the pattern moves by < 1e-4 of its range
    waves = np.cos(points.astype(np.float32) @ (dirs * freq[:, None]).T.astype(np.float32) + phase.astype(np.float32))
    return 0.5 + 0.5 * np.tanh(1.5 * waves.sum(axis=1, dtype=np.float64) / np.sqrt(48))


def photo_projection(landmarks_3d: np.ndarray) -> np.ndarray:
    """2×3 similarity from the head's frontal plane (x, y in metres) to the face photo's pixels,
    matching the head's 68 landmarks to the photo's (y flips: image rows go down)."""
    src = (landmarks_3d[:, :2] * [1.0, -1.0]).astype(np.float32)
    m, _ = cv2.estimateAffinePartial2D(src, SOURCE_LANDMARKS.astype(np.float32), method=cv2.LMEDS)
    return m @ np.diag([1.0, -1.0, 1.0])


def albedo(points: np.ndarray, normals: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """RGB albedo in [0, 1] at surface points: face photo on the front, speckle everywhere."""
    photo = source_image().astype(np.float32) / 255.0
    u, v = (projection @ np.c_[points[:, :2], np.ones(len(points))].T)
    face = np.stack([ndimage.map_coordinates(photo[:, :, c], [v, u], order=1, mode="reflect") for c in range(3)],
                    axis=1)
    front = np.clip((normals[:, 2] - 0.2) / 0.5, 0.0, 1.0)[:, None]
    skin = np.array([0.78, 0.6, 0.5])
    speckle = _speckle(points)[:, None]
    base = front * face + (1 - front) * skin
    depth = 0.45 - 0.25 * front  # lighter on the face, so detectors still see a face
    return np.clip(base * (1 - depth + depth * speckle), 0.0, 1.0)


def render_view(scene: o3d.t.geometry.RaycastingScene, cam: dict, projection: np.ndarray | None,
                scan: HeadScan | None = None) -> np.ndarray:
    """One calibrated photo (uint8 RGB): rays through the distorted pixels, albedo × fixed lights."""
    K = np.array([[cam["fx"], 0, cam["cx"]], [0, cam["fy"], cam["cy"]], [0, 0, 1]])
    R, t = np.asarray(cam["R"]), np.asarray(cam["t"])
    px = np.stack(np.meshgrid(np.arange(cam["width"]), np.arange(cam["height"])), axis=-1).reshape(-1, 1, 2)
    dist = np.array(list(cam["distortion"]) + [0.0])
    normalised = cv2.undistortPoints(px.astype(np.float64), K, dist).reshape(-1, 2)
    dirs_cam = np.concatenate([normalised, np.ones((len(normalised), 1))], axis=1)
    dirs = dirs_cam @ R  # camera → world (R is world → camera)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = -R.T @ t
    rays = np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], axis=1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy()
    ok = np.isfinite(t_hit)
    if scan is not None:  # an open face scan: its inside (seen from behind) is not part of the head
        ok &= np.sum(hit["primitive_normals"].numpy() * dirs, axis=1) < 0
    image = np.tile(np.array([0.12, 0.12, 0.14]), (len(rays), 1))  # dark backdrop of the stage
    points = origin + dirs[ok] * t_hit[ok, None]
    normals = hit["primitive_normals"].numpy()[ok]
    normals *= -np.sign(np.sum(normals * dirs[ok], axis=1, keepdims=True))  # towards the camera
    lights = np.array([[0.3, 0.5, 1.0], [-0.6, 0.2, 0.4], [0.0, -0.5, 0.6]])
    lights /= np.linalg.norm(lights, axis=1, keepdims=True)
    shade = 0.55 + 0.45 * np.clip(normals @ lights.T, 0, None).mean(axis=1, keepdims=True) * 1.6
    if scan is not None:  # a real scan: its own texture (which already holds its capture's shading)
        colour = scan.colour_at(hit["primitive_ids"].numpy()[ok], hit["primitive_uvs"].numpy()[ok])
        image[ok] = colour * np.clip(0.75 + 0.25 * shade, 0, 1.2)
    else:
        image[ok] = albedo(points, normals, projection) * np.clip(shade, 0, 1.2)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8).reshape(cam["height"], cam["width"], 3)


def export_head_scan(path: str | Path, model: FlameModel, shape: np.ndarray, units: str = "mm",
                     subdivisions: int = 2) -> np.ndarray:
    """The stand-in head of `shape` as a scanner would hand it over: a PLY in `units` whose vertex
    colours carry the light stage's albedo (the mesh midpoint-subdivided so they resolve a face; the
    surface is unchanged). Returns its 68 true landmarks in metres."""
    from singinghead.capture_rigs.scan_files import UNITS

    verts, faces = head_mesh(model, shape)
    landmarks = np.einsum("lcx,lc->lx", verts[faces[model.lmk_faces_idx]], model.lmk_bary_coords)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(faces))
    mesh = mesh.subdivide_midpoint(subdivisions)
    mesh.compute_vertex_normals()
    colours = albedo(np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), photo_projection(landmarks))
    mesh.vertex_colors = o3d.utility.Vector3dVector(colours)
    mesh.vertices = o3d.utility.Vector3dVector(np.asarray(mesh.vertices) / UNITS[units])
    o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=False, write_vertex_normals=False)
    return landmarks


SCAN_LANDMARK_CENTRE = np.array([0.0, -0.01, 0.06])  # where a real scan's landmarks sit in the rig (m)


def write_light_stage(out: str | Path, model: FlameModel, shape: np.ndarray, gt_dir: str | Path,
                      scan: HeadScan | None = None, photos: Collection[str] | None = None) -> dict:
    """Photos + calibration under `out` (photos/, calibration.json); the true mesh into gt_dir.
    `photos` names the photos to render (all of them by default; the calibration lists all).

    With `scan` (a real textured scan) the views show that scan with its own texture, placed in
    the rig with its landmarks' centroid at SCAN_LANDMARK_CENTRE, and the truth is the scan and its
    68 landmarks (which no head model represents exactly); without, the stand-in head of `shape`."""
    out, gt_dir = Path(out), Path(gt_dir)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    if scan is not None:
        scan = placed(scan, SCAN_LANDMARK_CENTRE)
        verts, faces, landmarks, projection = scan.vertices, scan.triangles, scan.landmarks, None
    else:
        verts, faces = head_mesh(model, shape)
        landmarks = np.einsum("lcx,lc->lx", verts[faces[model.lmk_faces_idx]], model.lmk_bary_coords)
        projection = photo_projection(landmarks)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    cams = dome_cameras()
    for cam in cams if photos is None else [c for c in cams if c["image"] in photos]:
        rgb = render_view(scene, cam, projection, scan)
        cv2.imwrite(str(out / "photos" / cam["image"]), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    calibration = {"units": "m", "convention": "OpenCV: x_cam = R · x_world + t; pixel centres at integers",
                   "cameras": cams}
    (out / "calibration.json").write_text(json.dumps(calibration, indent=1))
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(faces))
    o3d.io.write_triangle_mesh(str(gt_dir / "head_mesh.ply"), mesh)
    np.save(gt_dir / "head_landmarks.npy", landmarks)
    return {"source": "real scan" if scan is not None else "stand-in head",
            "shape": None if scan is not None else [float(x) for x in shape], "mesh": "head_mesh.ply",
            "landmarks": "head_landmarks.npy", "views": len(cams)}
