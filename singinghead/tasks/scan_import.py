"""A ready-made scan as the subject's scan: the same artifacts photogrammetry makes, from the lab's file.

The mesh is read in its stated units (`capture_rigs.scan_files`, refused when they make no head)
and sampled area-uniformly into the points the scan fit matches. Its 68 landmarks are the lab's
when given; otherwise they are found the way the photo path finds them, on views rendered from
the scan (open3d ray casting of its texture or vertex colours, under a light at the camera):
1. Where the face is: views around the scan at the horizon of each candidate up axis (+y first,
   scans are usually y-up) until MTCNN finds a confident face; dlib's points in the best view,
   cast back onto the surface, give the face's frame (eyes → left-right, eyes over mouth → up,
   their cross product → out of the face).
2. A small rig of views around that frame (yaw ±40°, pitch ±15°, the face about half the image
   wide) is rendered, and MTCNN + dlib + LO-RANSAC triangulation run exactly as on light-stage
   photos (`photogrammetry.detect_view_landmarks`, `triangulate_landmarks`); the points are
   snapped to the scan.
A scan without colour usually shows no face a detector finds; the error then asks for its
landmarks. The report says where the landmarks came from and how well the views agreed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
from prefect import task

from singinghead.capture_rigs.light_stage import LightStageRig, RigCamera
from singinghead.capture_rigs.scan_files import HeadScan, companion_files, read_scan
from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.errors import InputError
from singinghead.schemas.manifest import LightStage
from singinghead.storage import files
from singinghead.storage.catalog import Catalog, cache_key
from singinghead.tasks import photogrammetry
from singinghead.tasks.landmarks import face_analyser

STEP = "scan_import"
VERSION = "1"
POINTS = 200_000
RENDER_PX = 640
SEARCH_UPS = ((0, 1, 0), (0, 0, 1), (0, -1, 0), (0, 0, -1), (1, 0, 0), (-1, 0, 0))
SEARCH_AZIMUTHS = 8
VIEW_YAWS_DEG = (-40, -20, 0, 20, 40)
VIEW_PITCHES_DEG = (-15, 0, 15)
MIN_SCORE = 0.95
MAX_GIVEN_OFF_SURFACE_MM = 10.0
MIN_NOSE_PROTRUSION = 0.15  # inter-ocular distances: a face's nose stands ~0.45 out (`nose_protrusion`)


def surface_points(scan: HeadScan, n: int = POINTS, seed: int = 0) -> np.ndarray:
    """`n` points spread uniformly over the surface's area (seeded: the same scan gives the same points)."""
    tri = scan.vertices[scan.triangles]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    a, b = rng.random((2, n))
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    t = tri[pick]
    return t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])


def look_at(target: np.ndarray, towards_camera: np.ndarray, up: np.ndarray, distance: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of an OpenCV camera `distance` from `target` along `towards_camera`, image up ≈ `up`."""
    z = -towards_camera / np.linalg.norm(towards_camera)
    y = -(up - (up @ z) * z)
    y /= np.linalg.norm(y)
    R = np.stack([np.cross(y, z), y, z])
    return R, -R @ (target - distance * z)


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()


class ScanRenderer:
    """Pinhole views of a scan: its colour (grey without) under a light at the camera."""

    def __init__(self, scan: HeadScan, size: int = RENDER_PX):
        self.scan, self.size = scan, size
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(scan.vertices.astype(np.float32)),
                                 o3d.core.Tensor(scan.triangles.astype(np.uint32)))
        # Which side is outside: open scans have an inside that would show a hollow face.
        tri = scan.vertices[scan.triangles]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        outward = tri.mean(axis=1) - scan.vertices.mean(axis=0)
        self.winding = 1.0 if np.sum(normals * outward) >= 0 else -1.0

    def _rays(self, K: np.ndarray, R: np.ndarray, t: np.ndarray, pixels: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        dirs = np.c_[pixels, np.ones(len(pixels))] @ np.linalg.inv(K).T @ R  # camera → world
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return -R.T @ t, dirs

    def _cast(self, K, R, t, pixels) -> tuple[np.ndarray, np.ndarray, dict]:
        origin, dirs = self._rays(K, R, t, pixels)
        rays = np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], axis=1).astype(np.float32)
        hit = {k: v.numpy() for k, v in self.scene.cast_rays(o3d.core.Tensor(rays)).items()}
        ok = np.isfinite(hit["t_hit"]) & (self.winding * np.sum(hit["primitive_normals"] * dirs, axis=1) < 0)
        return origin + dirs * hit["t_hit"][:, None], ok, {**hit, "dirs": dirs}

    def render(self, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        """uint8 RGB, size × size, on a dark backdrop."""
        px = np.stack(np.meshgrid(np.arange(self.size), np.arange(self.size)), axis=-1).reshape(-1, 2)
        _, ok, hit = self._cast(K, R, t, px.astype(np.float64))
        image = np.tile(np.array([0.12, 0.12, 0.14]), (len(px), 1))
        lambert = np.abs(np.sum(hit["primitive_normals"][ok] * hit["dirs"][ok], axis=1, keepdims=True))
        colour = self.scan.colour_at(hit["primitive_ids"][ok], hit["primitive_uvs"][ok])
        if colour is None:
            colour = np.full((int(ok.sum()), 3), 0.7)
        image[ok] = colour * (0.45 + 0.55 * lambert)
        return (np.clip(image, 0, 1) * 255).round().astype(np.uint8).reshape(self.size, self.size, 3)

    def surface_at(self, K: np.ndarray, R: np.ndarray, t: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """3D surface points seen at `pixels` (NaN where the ray misses)."""
        points, ok, _ = self._cast(K, R, t, pixels)
        points[~ok] = np.nan
        return points


def find_face(renderer: ScanRenderer, analyser, source: Path) -> dict:
    """The face's centre, outward direction, up direction and width (m), from views around the scan."""
    scan = renderer.scan
    centre = (scan.vertices.min(axis=0) + scan.vertices.max(axis=0)) / 2
    radius = float(np.linalg.norm(scan.vertices - centre, axis=1).max())
    K = np.array([[renderer.size / 2 / 1.1 * 3.0, 0, (renderer.size - 1) / 2],
                  [0, renderer.size / 2 / 1.1 * 3.0, (renderer.size - 1) / 2], [0, 0, 1]])  # the scan fills the view
    tried = 0
    for up in SEARCH_UPS:
        up = np.asarray(up, dtype=np.float64)
        side = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
        best = None
        for k in range(SEARCH_AZIMUTHS):
            towards = _rotation(up, 360.0 * k / SEARCH_AZIMUTHS) @ side
            R, t = look_at(centre, towards, up, 3.0 * radius)
            rgb = renderer.render(K, R, t)
            boxes, probs = analyser.detect(rgb)
            tried += 1
            if len(probs) and probs.max() >= MIN_SCORE and (best is None or probs.max() > best[0]):
                best = (float(probs.max()), rgb, boxes[int(np.argmax(probs))], R, t)
        if best is not None:
            break
    else:
        colour = "it has no texture or vertex colours, so " if not scan.has_colour else ""
        raise InputError(source, f"no face found in {tried} views rendered around the scan ({colour}a face "
                                 "detector sees no face); give its 68 landmarks as light_stage.landmarks")
    _, rgb, box, R, t = best
    lmk = renderer.surface_at(K, R, t, analyser.landmarks(rgb, box))  # NaN: off the surface (jaw contour)
    eyes_left, eyes_right = np.nanmean(lmk[36:42], axis=0), np.nanmean(lmk[42:48], axis=0)
    across = eyes_right - eyes_left  # the image's left to right, as dlib numbers the eyes
    up = (eyes_left + eyes_right) / 2 - np.nanmean(lmk[48:68], axis=0)
    up -= (up @ across) / (across @ across) * across
    out = np.cross(across, up)
    face = {"centre": np.nanmean(lmk[17:68], axis=0), "out": out / np.linalg.norm(out),
            "up": up / np.linalg.norm(up), "width_m": 2.2 * float(np.linalg.norm(across)),
            "search_views": tried, "score": best[0]}  # a face is ~2.2 times as wide as its eyes are apart
    if not all(np.isfinite(v).all() for v in face.values()):
        raise InputError(source, "the face found on a rendered view is not on the scan's surface "
                                 "(its eyes or mouth miss the mesh); give its 68 landmarks as light_stage.landmarks")
    return face


def view_rig(renderer: ScanRenderer, face: dict, folder: Path, source: Path) -> LightStageRig:
    """Rendered views around the face's frame, written as PNGs, as a calibrated rig."""
    across = np.cross(face["up"], face["out"])
    distance = 4.0 * face["width_m"]
    f = 0.5 * renderer.size * distance / face["width_m"]  # the face about half the image wide
    K = np.array([[f, 0, (renderer.size - 1) / 2], [0, f, (renderer.size - 1) / 2], [0, 0, 1]])
    cameras = []
    for pitch in VIEW_PITCHES_DEG:
        for yaw in VIEW_YAWS_DEG:
            towards = _rotation(face["up"], yaw) @ _rotation(across, -pitch) @ face["out"]
            R, t = look_at(face["centre"], towards, face["up"], distance)
            name = f"yaw{yaw:+d}_pitch{pitch:+d}"
            image = folder / f"{name}.png"
            cv2.imwrite(str(image), renderer.render(K, R, t)[:, :, ::-1])
            cameras.append(RigCamera(name, image, renderer.size, renderer.size, K, np.zeros(4), R, t))
    return LightStageRig(source, cameras)


def find_landmarks(scan: HeadScan, source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(snapped (68, 3), triangulated (68, 3), residual px (68,), report) from views rendered of the scan."""
    renderer = ScanRenderer(scan)
    face = find_face(renderer, face_analyser("auto"), source)
    with tempfile.TemporaryDirectory(prefix="singinghead-scan-views-") as tmp:
        rig = view_rig(renderer, face, Path(tmp), source)
        raw, residual, report = photogrammetry.triangulate_landmarks(rig, photogrammetry.detect_view_landmarks(rig))
    report = {"source": "found on views rendered from the scan", "views_rendered": len(rig.cameras),
              "search_views": face["search_views"], "coloured": scan.has_colour, **report}
    if not scan.has_colour:
        report["warning"] = ("found on grey renders of a scan without texture or vertex colours, where dlib is "
                             "less reliable: check them, or give the scan's landmarks")
    return photogrammetry.snap_to_surface(raw, scan.vertices, scan.triangles), raw, residual, report


def nose_protrusion(landmarks: np.ndarray) -> float:
    """How far the nose tip stands in front of the plane through the outer eye corners and the
    chin, in inter-ocular distances, for 68 points in dlib's order in right-handed coordinates
    ("in front": the side the face looks to when point 37 is the subject's right eye). About
    +0.45 for a face (the real scan's hand-placed points +0.48, the ICT head's +0.44); negative
    when left and right are swapped (-0.48) and meaningless for another order (the real scan's
    own label-group order: -1.1). A face is chiral, so its points must be."""
    eyes = landmarks[45] - landmarks[36]
    normal = np.cross(landmarks[8] - landmarks[36], eyes)
    normal /= np.linalg.norm(normal) + 1e-12
    return float((landmarks[30] - landmarks[36]) @ normal / (np.linalg.norm(eyes) + 1e-12))


def import_scan(root: Path, light_stage: LightStage) -> tuple[photogrammetry.Scan, np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """(scan, landmarks, landmarks before snapping, residual px) of a ready-made scan."""
    source = root / light_stage.scan
    scan = read_scan(source, light_stage.units, root / light_stage.landmarks if light_stage.landmarks else None)
    if scan.landmarks is not None:
        raw = scan.landmarks
        landmarks = photogrammetry.snap_to_surface(raw, scan.vertices, scan.triangles)
        offset = np.linalg.norm(landmarks - raw, axis=1) * 1000
        residual = np.full(68, np.nan)
        eyes_mm = float(np.linalg.norm(raw[45] - raw[36])) * 1000
        if not 40.0 < eyes_mm < 200.0:
            raise InputError(root / light_stage.landmarks, f"points 37 and 46 (dlib's outer eye corners) are "
                                                           f"{eyes_mm:.3g} mm apart, a face's are about 100: give the "
                                                           "landmarks in the scan's units, in dlib's order")
        nose = nose_protrusion(raw)
        if not nose > MIN_NOSE_PROTRUSION:
            raise InputError(root / light_stage.landmarks,
                             f"the landmarks do not make a face in dlib's order: the nose tip (point 31) stands "
                             f"{nose:+.2f} inter-ocular distances in front of the eye corners and chin, a face's "
                             "about +0.45. Left and right are swapped, or the points follow another order (a file's "
                             "own label groups): give them in dlib's order, point 37 on the subject's right eye")
        if np.median(offset) > MAX_GIVEN_OFF_SURFACE_MM:
            raise InputError(root / light_stage.landmarks, f"the landmarks lie {np.median(offset):.0f} mm off the "
                                                           "scan's surface (median): give them in the scan's units "
                                                           "and coordinates, in dlib's order")
        lmk_report = {"source": "given", "file": light_stage.landmarks,
                      "off_surface_mm_median": float(np.median(offset)), "off_surface_mm_max": float(offset.max())}
    else:
        landmarks, raw, residual, lmk_report = find_landmarks(scan, source)
    report = {"source": "ready-made scan", "file": light_stage.scan, "units": light_stage.units,
              "extent_m": [float(x) for x in np.ptp(scan.vertices, axis=0)], "coloured": scan.has_colour,
              "points": POINTS, **photogrammetry.mesh_report(scan.vertices, scan.triangles), "landmarks": lmk_report}
    return photogrammetry.Scan(surface_points(scan), scan.vertices, scan.triangles, report), landmarks, raw, residual


# --- the processing step -------------------------------------------------------------------------

def _identity(catalog: Catalog, root: Path, light_stage: LightStage) -> tuple[dict, dict]:
    scan = root / light_stage.scan
    inputs = {f"scan/{p.name}": catalog.raw_checksum(p)[0] for p in [scan, *companion_files(scan)]}
    if light_stage.landmarks:
        inputs["landmarks"] = catalog.raw_checksum(root / light_stage.landmarks)[0]
    params = {"units": light_stage.units, "points": POINTS, "render_px": RENDER_PX, "min_score": MIN_SCORE,
              "views": [VIEW_YAWS_DEG, VIEW_PITCHES_DEG]}
    return params, inputs


def scan_for_subject(session_dir: str, session_id: str, light_stage: LightStage, out: str) -> list[ArtifactRef]:
    """The ready-made scan, its 3D landmarks and report under sessions/<id>/light_stage/ (catalogued)."""
    catalog, root = Catalog(out), Path(session_dir)
    params, inputs = _identity(catalog, root, light_stage)
    done = catalog.lookup(STEP, VERSION, params, inputs)
    if done is not None:
        return done.outputs
    key = cache_key(STEP, VERSION, params, inputs)
    scan, landmarks, raw, residual = import_scan(root, light_stage)
    refs = photogrammetry.publish_scan(scan, landmarks, raw, residual,
                                       files.join(out, "sessions", session_id, "light_stage", STEP, key[:16]))
    catalog.record(STEP, VERSION, params, inputs, refs, meta={"session_id": session_id})
    return refs


def scan_done(session_dir: str, light_stage: LightStage, out: str) -> list[ArtifactRef] | None:
    catalog = Catalog(out)
    done = catalog.lookup(STEP, VERSION, *_identity(catalog, Path(session_dir), light_stage))
    return done.outputs if done is not None else None


@task(name="scan-import", task_run_name="scan-import-{session_id}", retries=1, retry_delay_seconds=2)
def scan_task(session_dir: str, session_id: str, light_stage: LightStage, out: str) -> list[ArtifactRef]:
    return scan_for_subject(session_dir, session_id, light_stage, out)
