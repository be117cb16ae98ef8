"""Light-stage photogrammetry: calibrated photos → a metric head scan (points + mesh) and 3D landmarks.

1. COLMAP via pycolmap: SIFT features, exhaustive matching with geometric verification, then
   triangulation with the rig's known poses (`triangulate_points`, COLMAP's point_triangulator:
   the calibrated rig is not re-adjusted). Points with a short track or a large reprojection
   error are dropped. These sparse points bound each view's depth range and check the
   calibration (their reprojection error).
2. Dense stage on the CPU (`tasks.mvs`): per view, plane-sweep NCC depth against its closest
   views at half the photos' resolution, filtered by multi-view geometric consistency and fused
   on a 0.5 mm voxel grid with normals facing the cameras. (COLMAP's patch-match stereo needs
   CUDA, which this pycolmap build lacks; the report's `dense` says what ran.)
3. Meshing with open3d: statistical outlier removal, screened Poisson (depth 8), removal of the
   low-density Poisson skirt and a crop to the points' box.
4. Scan landmarks, the FLAME authors' recipe: dlib's 68 points in the views that see a face
   (MTCNN box), each landmark triangulated from all those views with LO-RANSAC
   (`pycolmap.estimate_triangulation`), residuals reported in pixels; then snapped to the scan.

When too few points result, the error says what was measured — matches per view pair, views
with no match, how much of each photo has texture, the sparse points' reprojection error — and
blames the calibration only when that reprojection error does.

The scan is in metres (the rig's units); its report lists points, surface area and holes
(boundary loops of the mesh).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pycolmap
from prefect import task

from singinghead.capture_rigs.light_stage import LightStageRig, RigCamera, load_rig
from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.errors import InputError
from singinghead.schemas.manifest import LightStage
from singinghead.schemas.settings import get_settings
from singinghead.storage import files
from singinghead.storage.catalog import Catalog, cache_key
from singinghead.tasks import mvs

MAX_REPROJECTION_PX = 2.0
MIN_TRACK = 3
POISSON_DEPTH = 8
MIN_DENSE_POINTS = 5000
#: Sparse points this far off their observations on average mean the calibration does not fit the photos.
CALIBRATION_SUSPECT_PX = 1.5
STEREO = mvs.StereoParams(scale=0.5, planes=64)


@dataclass
class Scan:
    points: np.ndarray  # (N, 3) triangulated (and fused) points, metres
    vertices: np.ndarray  # (V, 3) mesh, metres
    triangles: np.ndarray  # (F, 3)
    report: dict


def _colmap_camera(cam: RigCamera, camera_id: int) -> pycolmap.Camera:
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2] + 0.5, cam.K[1, 2] + 0.5  # COLMAP: centres at .5
    return pycolmap.Camera(model="OPENCV", width=cam.width, height=cam.height,
                           params=[fx, fy, cx, cy, *cam.distortion], camera_id=camera_id)


def _pose(cam: RigCamera) -> pycolmap.Rigid3d:
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(cam.R).as_quat()  # x, y, z, w (pycolmap's order too)
    return pycolmap.Rigid3d(pycolmap.Rotation3d(q), cam.t)


def known_pose_model(rig: LightStageRig) -> pycolmap.Reconstruction:
    """A COLMAP model holding the rig: one camera, trivial rig and frame per view, known poses."""
    recon = pycolmap.Reconstruction()
    for k, cam in enumerate(rig.cameras, start=1):
        recon.add_camera_with_trivial_rig(_colmap_camera(cam, k))
        image = pycolmap.Image(name=cam.image.name, camera_id=k, image_id=k)
        recon.add_image_with_trivial_frame(image, _pose(cam))
    return recon


def _write_database(recon: pycolmap.Reconstruction, path: Path) -> None:
    with pycolmap.Database.open(str(path)) as db:
        for camera in recon.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in recon.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in recon.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in recon.images.values():
            db.write_image(image, use_image_id=True)


def _colmap_log_level() -> None:
    """COLMAP logs every image and match through glog: errors only unless asked for."""
    verbose = get_settings().colmap_verbose
    pycolmap.logging.minloglevel = int(pycolmap.logging.INFO if verbose else pycolmap.logging.ERROR)
    pycolmap.logging.stderrthreshold = int(pycolmap.logging.INFO if verbose else pycolmap.logging.ERROR)


def triangulate(rig: LightStageRig, work: Path, max_features: int = 8192) -> tuple[np.ndarray, dict]:
    """Sparse points (N, 3) from SIFT matches triangulated with the known poses, and a report."""
    _colmap_log_level()
    photos = rig.cameras[0].image.parent
    db = work / "database.db"
    reference = known_pose_model(rig)
    _write_database(reference, db)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = max_features
    extraction.num_threads = 2
    pycolmap.extract_features(db, photos, image_names=[c.image.name for c in rig.cameras],
                              extraction_options=extraction)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 2
    pycolmap.match_exhaustive(db, matching_options=matching)
    options = pycolmap.IncrementalPipelineOptions()
    options.triangulation.ignore_two_view_tracks = True
    (work / "sparse").mkdir(exist_ok=True)
    recon = pycolmap.triangulate_points(reference, db, photos, work / "sparse", options=options)
    xyz, err, track = [], [], []
    for point in recon.points3D.values():
        xyz.append(point.xyz)
        err.append(point.error)
        track.append(point.track.length())
    xyz, err, track = np.asarray(xyz).reshape(-1, 3), np.asarray(err), np.asarray(track)
    keep = (err < MAX_REPROJECTION_PX) & (track >= MIN_TRACK)
    report = {"triangulated": int(len(xyz)), "kept": int(keep.sum()),
              "reprojection_px_mean": float(err[keep].mean()) if keep.any() else None,
              "reprojection_px_mean_all": float(err.mean()) if len(err) else None,
              "track_length_mean": float(track[keep].mean()) if keep.any() else None,
              "matches": _match_statistics(db, rig)}
    return xyz[keep], report


def _match_statistics(db: Path, rig: LightStageRig) -> dict:
    """Verified matches per view pair (median over pairs that have any) and views without one."""
    names = {}
    with pycolmap.Database.open(str(db)) as database:
        for image in database.read_all_images():
            names[image.image_id] = image.name
        pair_ids, inliers = database.read_two_view_geometry_num_inliers()
    per_view = {name: 0 for name in names.values()}
    counts = []
    for pair, n in zip(pair_ids, inliers, strict=True):
        if n <= 0:
            continue
        a, b = pycolmap.pair_id_to_image_pair(pair)
        per_view[names[a]] += n
        per_view[names[b]] += n
        counts.append(n)
    by_name = {c.image.name: c.id for c in rig.cameras}
    return {"verified_pairs": len(counts), "pairs": len(names) * (len(names) - 1) // 2,
            "inliers_per_pair_median": float(np.median(counts)) if counts else 0.0,
            "views_without_matches": sorted(by_name.get(n, n) for n, k in per_view.items() if k == 0)}


def photo_texture(rig: LightStageRig, patch: int = 7, min_std: float = mvs.StereoParams.min_std) -> dict:
    """How much of each photo has texture to match: the share of pixels whose patch has a grey
    standard deviation of at least `min_std` levels (median over views), and the median contrast."""
    shares, contrasts = [], []
    for cam in rig.cameras:
        grey = cv2.imread(str(cam.image), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        mean = cv2.blur(grey, (patch, patch))
        std = np.sqrt(np.maximum(cv2.blur(grey * grey, (patch, patch)) - mean * mean, 0))
        shares.append(float((std >= min_std).mean()))
        contrasts.append(float(np.median(std)))
    return {"textured_share_median": float(np.median(shares)), "patch_std_median": float(np.median(contrasts))}


def too_few_points(rig: LightStageRig, n_points: int, sparse: dict, dense: dict) -> str:
    """The measured cause of a failed reconstruction, in words, and what to try."""
    m = sparse["matches"]
    texture = photo_texture(rig)
    facts = [f"{m['verified_pairs']} of {m['pairs']} view pairs have verified SIFT matches "
             f"(median {m['inliers_per_pair_median']:.0f} per pair)",
             f"{len(m['views_without_matches'])} views have none"
             + (f" ({', '.join(m['views_without_matches'][:8])}{', …' if len(m['views_without_matches']) > 8 else ''})"
                if m["views_without_matches"] else ""),
             f"{sparse['kept']} sparse points",
             f"{100 * texture['textured_share_median']:.0f} % of a photo has texture (patch std ≥ "
             f"{mvs.StereoParams.min_std:g} grey levels; median patch std {texture['patch_std_median']:.1f})"]
    if dense.get("per_view"):
        matched = np.median([v["matched_share"] for v in dense["per_view"].values()])
        facts.append(f"dense matching kept {100 * matched:.1f} % of the pixels of a view")
    err = sparse.get("reprojection_px_mean_all")
    if err is not None and err > CALIBRATION_SUSPECT_PX:
        facts.append(f"the triangulated points miss their observations by {err:.1f} px on average")
        advice = "the calibration does not fit the photos: check camera ids, units and the pose convention"
    elif texture["textured_share_median"] < 0.2 or m["inliers_per_pair_median"] < 30:
        advice = ("the surface has too little texture to match: light the subject with a projected pattern "
                  "or more contrast, or use photos at full resolution")
    else:
        advice = "too few views see the same surface: add views or check that the photos overlap"
    return (f"only {n_points} points reconstructed from the light-stage photos: " + "; ".join(facts)
            + f". Likely cause: {advice}.")


def mesh_points(points: np.ndarray, viewing_centre: np.ndarray, depth: int = POISSON_DEPTH,
                normals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean the cloud and mesh it (screened Poisson); returns (kept points, vertices, triangles).
    Without `normals` (oriented), they are estimated and turned away from the viewing centre."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if normals is not None:
        cloud.normals = o3d.utility.Vector3dVector(normals)
    cloud, _ = cloud.remove_statistical_outlier(nb_neighbors=20, std_ratio=2.0)
    if normals is None:
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=0.01, max_nn=30))
        est = np.asarray(cloud.normals)
        outward = np.asarray(cloud.points) - viewing_centre
        est *= np.sign(np.sum(est * outward, axis=1, keepdims=True))
        cloud.normals = o3d.utility.Vector3dVector(est)
    mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(cloud, depth=depth)
    density = np.asarray(density)
    mesh.remove_vertices_by_mask(density < np.quantile(density, 0.04))
    box = cloud.get_axis_aligned_bounding_box()
    box = o3d.geometry.AxisAlignedBoundingBox(box.min_bound - 0.005, box.max_bound + 0.005)
    mesh = mesh.crop(box)
    mesh.remove_unreferenced_vertices()
    return np.asarray(cloud.points), np.asarray(mesh.vertices), np.asarray(mesh.triangles)


def mesh_report(vertices: np.ndarray, triangles: np.ndarray) -> dict:
    """Surface area (m²) and holes: loops of edges that belong to one triangle only."""
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles))
    edges = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = unique[counts == 1]
    parent = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in boundary:
        parent[find(a)] = find(b)
    loops = len({find(a) for a in boundary.ravel()})
    return {"vertices": int(len(vertices)), "triangles": int(len(triangles)),
            "surface_area_m2": float(mesh.get_surface_area()), "holes": loops,
            "boundary_edges": int(len(boundary))}


def check_units(points: np.ndarray, source: str | Path) -> None:
    """A head is 0.1–0.5 m across: anything 100× that is millimetres (or worse)."""
    extent = float(np.ptp(points, axis=0).max()) if len(points) else 0.0
    if extent > 5.0:
        raise InputError(source, f"scan spans {extent:.0f} units: it looks like millimetres; scans must be in metres")
    if extent < 0.05:
        raise InputError(source, f"scan spans {extent:.4f} units: too small for a head in metres")


def reconstruct_scan(rig: LightStageRig, work: Path | None = None) -> Scan:
    """Photos → metric scan (see the module docstring)."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="singinghead-scan-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        sparse, report = triangulate(rig, work)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    if len(sparse) < 20:
        raise InputError(rig.calibration, too_few_points(rig, len(sparse), report, {}))
    check_units(sparse, rig.calibration)
    points, normals, dense = mvs.dense_points(rig.cameras, sparse, STEREO)
    if len(points) < MIN_DENSE_POINTS:
        raise InputError(rig.calibration, too_few_points(rig, len(points), report, dense))
    points, vertices, triangles = mesh_points(points, _viewing_centre(rig.cameras), normals=normals)
    report.update({"sparse_points": int(len(sparse)), "points": int(len(points)), "dense": dense["method"],
                   "dense_report": dense, **mesh_report(vertices, triangles), "views": len(rig.cameras),
                   "missing_views": rig.missing})
    return Scan(points, vertices, triangles, report)


def _viewing_centre(cameras: list[RigCamera]) -> np.ndarray:
    """The point closest to all optical axes (least squares): the middle of the head."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for cam in cameras:
        d = cam.R[2]  # optical axis in world
        M = np.eye(3) - np.outer(d, d)
        A += M
        b += M @ cam.centre
    return np.linalg.solve(A, b)


# --- scan landmarks ------------------------------------------------------------------------------

def detect_view_landmarks(rig: LightStageRig, device: str = "auto", min_score: float = 0.95
                          ) -> dict[str, np.ndarray]:
    """dlib 68 points (undistorted pixels) in every view where MTCNN finds one confident face."""
    from singinghead.tasks.landmarks import face_analyser

    analyser = face_analyser(device)
    found = {}
    for cam in rig.cameras:
        rgb = cv2.cvtColor(cv2.imread(str(cam.image)), cv2.COLOR_BGR2RGB)
        boxes, probs = analyser.detect(rgb)
        if len(probs) != 1 or probs[0] < min_score:
            continue
        lmk = analyser.landmarks(rgb, boxes[0])
        undist = cv2.undistortPoints(lmk.reshape(-1, 1, 2).astype(np.float64), cam.K,
                                     np.append(cam.distortion, 0.0), P=cam.K).reshape(-1, 2)
        found[cam.id] = undist
    return found


def _triangulate_each(cams: list[RigCamera], obs: np.ndarray, max_error_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(68, 3) points by LO-RANSAC over the views and (views, 68) reprojection residuals (NaN: outlier)."""
    pinholes = [pycolmap.Camera(model="PINHOLE", width=c.width, height=c.height,
                                params=[c.K[0, 0], c.K[1, 1], c.K[0, 2] + 0.5, c.K[1, 2] + 0.5]) for c in cams]
    poses = [_pose(c) for c in cams]
    options = pycolmap.EstimateTriangulationOptions()
    options.residual_type = pycolmap.TriangulationResidualType.REPROJECTION_ERROR
    options.ransac.max_error = max_error_px
    options.ransac.random_seed = 0
    points, residual = np.full((68, 3), np.nan), np.full((len(cams), 68), np.nan)
    for k in range(68):
        result = pycolmap.estimate_triangulation(obs[:, k] + 0.5, poses, pinholes, options)
        if result is None:
            continue
        points[k] = np.asarray(result["xyz"])
        for j in np.flatnonzero(np.asarray(result["inliers"], dtype=bool)):
            x = cams[j].P @ np.append(points[k], 1.0)
            residual[j, k] = np.linalg.norm(x[:2] / x[2] - obs[j, k])
    return points, residual


def triangulate_landmarks(rig: LightStageRig, view_landmarks: dict[str, np.ndarray], max_error_px: float = 8.0
                          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(68, 3) landmarks (NaN where no two views agree), per-landmark RMS residual px, and a report.

    Views where dlib is far off as a whole (oblique views of a face) are dropped one at a time:
    the worst view goes while its median residual is over twice the others' and over 4 px."""
    cams = {c.id: c for c in rig.cameras}
    ids = sorted(view_landmarks)
    dropped = []
    while True:
        if len(ids) < 2:
            raise InputError(rig.calibration, f"a face was found in {len(ids)} light-stage view(s); at least two "
                                              "frontal views are needed for the scan landmarks")
        obs = np.stack([view_landmarks[i] for i in ids])
        points, residual = _triangulate_each([cams[i] for i in ids], obs, max_error_px)
        per_view = np.array([np.nanmedian(r) if np.isfinite(r).any() else np.inf for r in residual])
        worst = int(np.argmax(per_view))
        others = np.median(np.delete(per_view, worst))
        if len(ids) <= 3 or not (per_view[worst] > max(2 * others, 4.0)):
            break
        dropped.append(ids.pop(worst))
    rms = np.sqrt(np.nanmean(np.square(residual), axis=0)) if np.isfinite(residual).any() else np.full(68, np.nan)
    report = {"views_with_face": ids + dropped, "views_used": ids, "views_dropped": dropped,
              "landmarks_triangulated": int(np.isfinite(points[:, 0]).sum()),
              "residual_px_median": float(np.nanmedian(rms)), "residual_px_max": float(np.nanmax(rms)),
              "views_per_landmark_mean": float(np.isfinite(residual).sum(axis=0).mean())}
    return points, rms, report


def snap_to_surface(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Closest scan-surface point to each landmark (NaNs kept)."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    ok = np.isfinite(points[:, 0])
    out = points.copy()
    if ok.any():
        closest = scene.compute_closest_points(o3d.core.Tensor(points[ok].astype(np.float32)))
        out[ok] = closest["points"].numpy()
    return out


def write_scan(scan: Scan, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(scan.vertices),
                                     o3d.utility.Vector3iVector(scan.triangles))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scan.points))
    paths = {"mesh": folder / "scan.ply", "points": folder / "scan_points.ply", "report": folder / "scan_report.json"}
    o3d.io.write_triangle_mesh(str(paths["mesh"]), mesh)
    o3d.io.write_point_cloud(str(paths["points"]), cloud)
    paths["report"].write_text(json.dumps(scan.report, indent=2) + "\n")
    return paths


# --- the processing step -------------------------------------------------------------------------

STEP = "photogrammetry"
VERSION = "2"


def _identity(catalog: Catalog, root: Path, light_stage: LightStage) -> tuple[dict, dict, LightStageRig]:
    rig = load_rig(root / light_stage.photos, root / light_stage.calibration)
    calib = root / light_stage.calibration
    calib_files = sorted(p for p in calib.iterdir() if p.is_file()) if calib.is_dir() else [calib]
    inputs = {f"calibration/{p.name}": catalog.raw_checksum(p)[0] for p in calib_files}
    inputs.update({f"photo/{c.id}": catalog.raw_checksum(c.image)[0] for c in rig.cameras})
    params = {"max_reprojection_px": MAX_REPROJECTION_PX, "min_track": MIN_TRACK, "poisson_depth": POISSON_DEPTH,
              "dense": STEREO.as_dict()}
    return params, inputs, rig


def scan_for_subject(session_dir: str, session_id: str, light_stage: LightStage, out: str) -> list[ArtifactRef]:
    """The subject's scan, its 3D landmarks and report under sessions/<id>/light_stage/ (catalogued)."""
    catalog, root = Catalog(out), Path(session_dir)
    params, inputs, rig = _identity(catalog, root, light_stage)
    done = catalog.lookup(STEP, VERSION, params, inputs)
    if done is not None:
        return done.outputs
    key = cache_key(STEP, VERSION, params, inputs)
    out_dir = files.join(out, "sessions", session_id, "light_stage", STEP, key[:16])
    scan = reconstruct_scan(rig)
    view_landmarks = detect_view_landmarks(rig)
    raw, residual, lmk_report = triangulate_landmarks(rig, view_landmarks)
    landmarks = snap_to_surface(raw, scan.vertices, scan.triangles)
    scan.report["landmarks"] = lmk_report
    refs = publish_scan(scan, landmarks, raw, residual, out_dir)
    catalog.record(STEP, VERSION, params, inputs, refs, meta={"session_id": session_id})
    return refs


def publish_scan(scan: Scan, landmarks: np.ndarray, raw: np.ndarray, residual: np.ndarray, out_dir: str
                 ) -> list[ArtifactRef]:
    """The scan's mesh, points, report and landmarks under `out_dir`: what the scan fit reads."""
    refs = []
    with tempfile.TemporaryDirectory(prefix="singinghead-scan-") as tmp:
        paths = write_scan(scan, Path(tmp))
        np.savez(Path(tmp) / "scan_landmarks.npz", landmarks=landmarks, triangulated=raw, residual_px=residual)
        paths["landmarks"] = Path(tmp) / "scan_landmarks.npz"
        for kind, path in paths.items():
            url = files.join(out_dir, path.name)
            with files.atomic_output(url) as dst:
                shutil.copyfile(path, dst)
            refs.append(files.artifact_ref(url, kind=f"scan_{kind}"))
    return refs


def scan_done(session_dir: str, light_stage: LightStage, out: str) -> list[ArtifactRef] | None:
    catalog = Catalog(out)
    done = catalog.lookup(STEP, VERSION, *_identity(catalog, Path(session_dir), light_stage)[:2])
    return done.outputs if done is not None else None


@task(name="photogrammetry", task_run_name="photogrammetry-{session_id}", retries=1,
      retry_delay_seconds=2)
def scan_task(session_dir: str, session_id: str, light_stage: LightStage, out: str) -> list[ArtifactRef]:
    return scan_for_subject(session_dir, session_id, light_stage, out)


def load_scan(refs: list[ArtifactRef]) -> tuple[np.ndarray, np.ndarray, dict]:
    """(points (N, 3), landmarks (68, 3), report) of a catalogued scan."""
    by_kind = {r.meta["kind"]: r.url for r in refs}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "scan_points.ply"
        local.write_bytes(files.read_bytes(by_kind["scan_points"]))
        points = np.asarray(o3d.io.read_point_cloud(str(local)).points)
    with np.load(io.BytesIO(files.read_bytes(by_kind["scan_landmarks"]))) as d:
        landmarks = d["landmarks"]
    return points, landmarks, files.read_json(by_kind["scan_report"])
