"""Light stage: rig validation, photogrammetry, scan landmarks and the FLAME scan fit, against the
sample session's known head (its shape and mesh are ground truth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pyarrow.parquet as pq
import pytest

from singinghead.capture_rigs.light_stage import load_rig
from singinghead.flame.model import load_flame
from singinghead.samples.light_stage import head_mesh
from singinghead.schemas.errors import InputError
from singinghead.tasks import photogrammetry, scan_fit


@pytest.fixture(scope="module")
def truth(sample_session) -> dict:
    gt = json.loads((sample_session / "ground_truth" / "ground_truth.json").read_text())["light_stage"]
    mesh = o3d.io.read_triangle_mesh(str(sample_session / "ground_truth" / gt["mesh"]))
    return {"shape": np.asarray(gt["shape"]), "vertices": np.asarray(mesh.vertices),
            "faces": np.asarray(mesh.triangles)}


@pytest.fixture(scope="module")
def scan_outputs(processed_sample) -> dict[str, Path]:
    summary = processed_sample["first"]["light_stage"]
    assert summary["status"] == "ok", summary
    by_name = {Path(u).name: Path(u) for u in summary["scan"] + summary["fit"]}
    return by_name


def _calibration(session: Path) -> dict:
    return json.loads((session / "light_stage" / "calibration.json").read_text())


def test_rig_loads_all_51_views(sample_session):
    rig = load_rig(sample_session / "light_stage/photos", sample_session / "light_stage/calibration.json")
    assert len(rig.cameras) == 51 and rig.missing == []
    centres = np.stack([c.centre for c in rig.cameras])
    assert np.allclose(np.linalg.norm(centres - centres.mean(0), axis=1).mean(), 1.0, atol=0.1)  # a 1 m dome


def test_colmap_text_calibration_matches_json(sample_session, tmp_path):
    """The same rig written as COLMAP cameras.txt/images.txt loads to the same cameras."""
    from scipy.spatial.transform import Rotation

    cams = _calibration(sample_session)["cameras"]
    cam_lines, img_lines = [], []
    for k, c in enumerate(cams, start=1):
        cam_lines.append(f"{k} OPENCV {c['width']} {c['height']} {c['fx']} {c['fy']} {c['cx'] + 0.5} {c['cy'] + 0.5} "
                         + " ".join(str(d) for d in c["distortion"]))
        x, y, z, w = Rotation.from_matrix(np.asarray(c["R"])).as_quat()
        img_lines += [f"{k} {w} {x} {y} {z} {c['t'][0]} {c['t'][1]} {c['t'][2]} {k} {c['image']}", ""]
    folder = tmp_path / "colmap"
    folder.mkdir()
    (folder / "cameras.txt").write_text("# Camera list\n" + "\n".join(cam_lines) + "\n")
    (folder / "images.txt").write_text("# Image list\n" + "\n".join(img_lines) + "\n")
    a = load_rig(sample_session / "light_stage/photos", sample_session / "light_stage/calibration.json")
    b = load_rig(sample_session / "light_stage/photos", folder)
    for ca, cb in zip(a.cameras, b.cameras, strict=True):
        assert ca.id == cb.id
        np.testing.assert_allclose(ca.K, cb.K, atol=1e-9)
        np.testing.assert_allclose(ca.R, cb.R, atol=1e-9)
        np.testing.assert_allclose(ca.t, cb.t, atol=1e-9)
        np.testing.assert_allclose(ca.distortion, cb.distortion, atol=1e-12)


def test_bad_rigs_are_refused_with_the_file_named(session_copy):
    photos, calib_path = session_copy / "light_stage/photos", session_copy / "light_stage/calibration.json"
    calib = _calibration(session_copy)

    dup = dict(calib, cameras=calib["cameras"] + [calib["cameras"][3]])
    calib_path.write_text(json.dumps(dup))
    with pytest.raises(InputError, match="duplicate camera ids: cam03"):
        load_rig(photos, calib_path)

    wrong = json.loads(json.dumps(calib))
    wrong["cameras"][5]["width"] = 1024
    calib_path.write_text(json.dumps(wrong))
    with pytest.raises(InputError, match=r"cam05\.jpg: photo is 512×640 but camera cam05 is calibrated for 1024×640"):
        load_rig(photos, calib_path)

    mm = json.loads(json.dumps(calib))
    for c in mm["cameras"]:
        c["t"] = [1000.0 * v for v in c["t"]]
    calib_path.write_text(json.dumps(mm))
    with pytest.raises(InputError, match="millimetres") as err:
        load_rig(photos, calib_path)
    assert str(calib_path) in str(err.value)


def test_scan_in_millimetres_is_detected(truth, tmp_path):
    with pytest.raises(InputError, match="millimetres") as err:
        photogrammetry.check_units(truth["vertices"] * 1000.0, tmp_path / "scan.ply")
    assert "scan.ply" in str(err.value)
    photogrammetry.check_units(truth["vertices"], tmp_path / "scan.ply")  # metres pass


def test_scan_matches_the_true_head(scan_outputs, truth):
    """Chamfer both ways between the scan and the true surface (the bottom of the head, which
    no camera sees, is left out of completeness)."""
    points = np.asarray(o3d.io.read_point_cloud(str(scan_outputs["scan_points.ply"])).points)
    mesh = o3d.io.read_triangle_mesh(str(scan_outputs["scan.ply"]))
    verts, tris = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    accuracy = scan_fit.scan_distance(points, truth["vertices"], truth["faces"]) * 1000
    assert len(points) > 5000
    assert np.median(accuracy) < 0.3 and np.percentile(accuracy, 95) < 1.0  # mm
    mesh_accuracy = scan_fit.scan_distance(verts, truth["vertices"], truth["faces"]) * 1000
    assert np.median(mesh_accuracy) < 0.5 and np.percentile(mesh_accuracy, 90) < 2.0
    true_mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(truth["vertices"]),
                                          o3d.utility.Vector3iVector(truth["faces"]))
    samples = np.asarray(true_mesh.sample_points_uniformly(20000).points)  # area-uniform
    seen = samples[samples[:, 1] > -0.08]
    completeness = scan_fit.scan_distance(seen, verts, tris) * 1000
    assert np.median(completeness) < 0.5 and np.percentile(completeness, 90) < 1.5
    assert (completeness > 2.0).mean() < 0.12  # the crown, seen by few cameras, is the gap
    report = json.loads(scan_outputs["scan_report.json"].read_text())
    assert report["views"] == 51 and report["missing_views"] == []
    assert 0.05 < report["surface_area_m2"] < 0.2 and report["holes"] >= 1


def test_scan_landmarks_and_fitted_shape(scan_outputs, truth, processed_sample):
    with np.load(scan_outputs["scan_landmarks.npz"]) as d:
        landmarks, residual = d["landmarks"], d["residual_px"]
    model = load_flame(Path(processed_sample["out"]) / "assets" / "flame-ict")
    true_lmk = np.einsum("lc,lcx->lx", model.lmk_bary_coords, truth["vertices"][truth["faces"][model.lmk_faces_idx]])
    inner = np.linalg.norm(landmarks[17:] - true_lmk[17:], axis=1) * 1000
    assert np.isfinite(inner).all() and np.median(inner) < 10.0  # dlib on rendered photos: mm-level
    assert np.nanmedian(residual) < 6.0  # px, 512×640 photos

    fit = json.loads(scan_outputs["scan_fit.json"].read_text())
    shape_info = json.loads((Path(processed_sample["out"]) / "sessions/sample000/subject_shape.json").read_text())
    assert shape_info["source"] == "light-stage scan fit" and shape_info["shape"] == fit["shape"]
    fitted, _ = head_mesh(model, np.asarray(fit["shape"]))
    start, _ = head_mesh(model, np.asarray(shape_info["monocular_shape"]))
    error = np.linalg.norm(fitted - truth["vertices"], axis=1) * 1000
    assert error.mean() < 1.5 and error[model.masks["face"]].mean() < 1.5  # mm; stated bounds
    assert error.mean() < 0.5 * (np.linalg.norm(start - truth["vertices"], axis=1) * 1000).mean()
    assert fit["report"]["scan_to_mesh_mm"]["p50"] < 1.0 and fit["scan"]["points"] > 5000

    # The motion sequences use the fitted shape.
    motion = next(Path(processed_sample["out"]).glob("sessions/sample000/takes/*/flame_sequence/*/*_motion.parquet"))
    meta = pq.read_schema(motion).metadata
    assert meta[b"shape_source"] == b"light-stage scan fit"
    np.testing.assert_allclose(json.loads(meta[b"shape"]), fit["shape"])


def test_missing_views_are_reported_and_the_rest_used(session_copy, tmp_path):
    gone = ["cam07", "cam20", "cam33"]
    for cam in gone:
        (session_copy / "light_stage/photos" / f"{cam}.jpg").unlink()
    from singinghead.schemas.manifest import load_manifest

    light_stage = load_manifest(session_copy).light_stage
    refs = photogrammetry.scan_for_subject(str(session_copy), "sample000", light_stage, str(tmp_path / "out"))
    report = json.loads(Path(next(r.url for r in refs if r.meta["kind"] == "scan_report")).read_text())
    assert report["missing_views"] == gone and report["views"] == 48
    assert report["points"] > 5000


def test_too_few_views_is_an_error(session_copy):
    photos = session_copy / "light_stage/photos"
    for p in sorted(photos.glob("*.jpg"))[5:]:
        p.unlink()
    with pytest.raises(InputError, match="only 5 light-stage views usable"):
        load_rig(photos, session_copy / "light_stage/calibration.json")
