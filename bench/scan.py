"""Light-stage scan speed and accuracy: photogrammetry, scan landmarks and the FLAME scan fit.

The sample session's rendered light stage (51 views of a known head) goes through the
pipeline's steps, each timed: SIFT + exhaustive matching + known-pose triangulation + meshing,
landmark detection and triangulation, and the FLAME fit. The reference measured in the same
run is pycolmap's bare SIFT extraction of the same photos (every photogrammetry tool pays it),
so `photogrammetry_vs_sift` says what matching, triangulation and meshing add. Accuracy
against the truth: scan-to-true-surface distance and the fitted shape's vertex error.

The fit on a real scan, directly (no photos): `../shared/data/face_scan/james` (a real textured
face scan in mm with 68 landmarks) → FLAME scan fit; landmark residual (the 51 inner points, mm)
and scan-to-mesh distance over the face area (scan points on the fitted head's face mask within
3 cm of a landmark: hair, neck and shirt are not face), with the time. Targets (issue 15):
`real_scan_landmark_median_mm` ≤ 3, `real_scan_face_p50_mm` ≤ 1.5. Peak RSS of the process.
Last line: one JSON object, also in bench/results/scan.json.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import open3d as o3d  # noqa: E402
import pycolmap  # noqa: E402
import torch  # noqa: E402
from results_io import publish  # noqa: E402

from singinghead.capture_rigs.light_stage import load_rig  # noqa: E402
from singinghead.flame.ict import write_model  # noqa: E402
from singinghead.flame.layer import FlameLayer  # noqa: E402
from singinghead.flame.model import load_flame  # noqa: E402
from singinghead.samples.light_stage import head_mesh, write_light_stage  # noqa: E402
from singinghead.tasks import photogrammetry, scan_fit  # noqa: E402

REAL_SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "face_scan"


def real_scan_fit(model) -> dict:
    """The scan fit on the real scan's surface and landmarks (see the module docstring)."""
    from singinghead.samples.real_scan import load_textured_scan

    if not (REAL_SCAN / "james.obj").is_file():
        return {"real_scan": f"not found at {REAL_SCAN}"}
    scan = load_textured_scan(REAL_SCAN / "james.obj", REAL_SCAN / "james.ljson", "mm")
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(scan.vertices),
                                     o3d.utility.Vector3iVector(scan.triangles))
    o3d.utility.random.seed(0)
    points = np.asarray(mesh.sample_points_uniformly(60000).points)  # area-uniform, as a scanner samples
    layer = FlameLayer(model, dtype=torch.float64)
    t0 = time.perf_counter()
    fit = scan_fit.fit_scan(layer, points, scan.landmarks, init_shape=None)
    t_fit = time.perf_counter() - t0
    face = scan_fit.face_area_distance(points, fit.vertices, model.faces, model.masks["face"], scan.landmarks) * 1000
    fitted = np.einsum("lcx,lc->lx", fit.vertices[model.faces[model.lmk_faces_idx]], model.lmk_bary_coords)
    inner = np.linalg.norm(fitted[17:] - scan.landmarks[17:], axis=1) * 1000
    return {"real_scan_landmark_median_mm": round(float(np.median(inner)), 2),
            "real_scan_landmark_max_mm": round(float(inner.max()), 2),
            "real_scan_face_p50_mm": round(float(np.percentile(face, 50)), 3),
            "real_scan_face_p90_mm": round(float(np.percentile(face, 90)), 3),
            "real_scan_face_points": int(len(face)), "real_scan_fit_s": round(t_fit, 2)}


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = load_flame(write_model(tmp / "flame"))
        real = real_scan_fit(model)
        truth = np.random.default_rng(1).normal(0.0, 1.0, 100)
        (tmp / "gt").mkdir()
        write_light_stage(tmp / "ls", model, truth, tmp / "gt")
        rig = load_rig(tmp / "ls" / "photos", tmp / "ls" / "calibration.json")

        t0 = time.perf_counter()
        options = pycolmap.FeatureExtractionOptions()
        options.sift.max_num_features = 8192
        options.num_threads = 2
        pycolmap.extract_features(tmp / "sift.db", tmp / "ls" / "photos", extraction_options=options)
        t_sift = time.perf_counter() - t0

        t0 = time.perf_counter()
        scan = photogrammetry.reconstruct_scan(rig)
        t_scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw, _, lmk_report = photogrammetry.triangulate_landmarks(rig, photogrammetry.detect_view_landmarks(rig))
        landmarks = photogrammetry.snap_to_surface(raw, scan.vertices, scan.triangles)
        t_lmk = time.perf_counter() - t0
        t0 = time.perf_counter()
        layer = FlameLayer(model, dtype=torch.float64)
        fit = scan_fit.fit_scan(layer, scan.points, landmarks, init_shape=np.zeros(100))
        t_fit = time.perf_counter() - t0

    true_verts, faces = head_mesh(model, truth)
    to_truth = scan_fit.scan_distance(scan.points, true_verts, faces) * 1000
    vertex_err = np.linalg.norm(head_mesh(model, fit.shape)[0] - true_verts, axis=1) * 1000
    return {
        "name": "scan", "views": len(rig.cameras), "image_size": [rig.cameras[0].width, rig.cameras[0].height],
        "cuda": pycolmap.has_cuda, "points": scan.report["points"], "holes": scan.report["holes"],
        "sift_reference_s": round(t_sift, 2), "photogrammetry_s": round(t_scan, 2),
        "photogrammetry_vs_sift": round(t_scan / t_sift, 2), "landmarks_s": round(t_lmk, 2),
        "fit_s": round(t_fit, 2), "total_s": round(t_scan + t_lmk + t_fit, 2),
        "scan_to_truth_mm_p50": round(float(np.percentile(to_truth, 50)), 3),
        "scan_to_truth_mm_p95": round(float(np.percentile(to_truth, 95)), 3),
        "shape_vertex_error_mm_mean": round(float(vertex_err.mean()), 3),
        "landmark_residual_px_median": round(lmk_report["residual_px_median"], 2),
        "fit_report": json.loads(json.dumps(fit.report)), **real,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    publish(main())
