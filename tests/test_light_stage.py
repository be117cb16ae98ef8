"""Light stage: rig validation, photogrammetry, scan landmarks and the FLAME scan fit, against the
surface the sample session's light stage photographed: the real textured face scan of
../shared/data (in CI; its 68 landmarks are truth no model made, and no head model represents it
exactly) or, without shared data, the stand-in head with a known shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
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
    return {"source": gt["source"], "vertices": np.asarray(mesh.vertices), "faces": np.asarray(mesh.triangles),
            "landmarks": np.load(sample_session / "ground_truth" / gt["landmarks"]),
            "samples": np.asarray(mesh.sample_points_uniformly(40000).points)}  # area-uniform


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


def _face_area(points: np.ndarray, landmarks: np.ndarray, radius_m: float = 0.03) -> np.ndarray:
    """Points within 3 cm of a true landmark: the face, not hair, neck or clothes."""
    return points[np.linalg.norm(points[:, None] - landmarks[None], axis=2).min(1) < radius_m]


def test_scan_matches_the_true_surface(scan_outputs, truth):
    """Chamfer both ways between the scan and the photographed surface, on the face area.
    Tolerances: the dense stage matches at half the photos' resolution, where a pixel is ≈ 1 mm
    at the dome's 1 m, and refines depth below a plane: points within half a pixel at the median,
    2 px at the 95th percentile (measured 0.4 / 1.4 mm); the Poisson mesh averages them (measured
    0.2 mm median, 0.6 mm p90)."""
    points = np.asarray(o3d.io.read_point_cloud(str(scan_outputs["scan_points.ply"])).points)
    mesh = o3d.io.read_triangle_mesh(str(scan_outputs["scan.ply"]))
    verts, tris = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    assert len(points) > 100_000  # dense: every matched pixel, not a few thousand SIFT points
    accuracy = scan_fit.scan_distance(_face_area(points, truth["landmarks"]), truth["vertices"], truth["faces"]) * 1000
    assert np.median(accuracy) < 0.5 and np.percentile(accuracy, 95) < 2.0  # mm
    mesh_accuracy = scan_fit.scan_distance(_face_area(verts, truth["landmarks"]), truth["vertices"], truth["faces"])
    assert np.median(mesh_accuracy) * 1000 < 0.4 and np.percentile(mesh_accuracy, 90) * 1000 < 1.2
    completeness = scan_fit.scan_distance(_face_area(truth["samples"], truth["landmarks"]), verts, tris) * 1000
    # the face is covered; what is not (≈ 2 %) lies under the chin and in the nostrils, which the
    # dome's lowest ring (−30°) sees at grazing angles only
    assert np.median(completeness) < 0.4 and (completeness > 2.0).mean() < 0.05
    report = json.loads(scan_outputs["scan_report.json"].read_text())
    assert report["views"] == 51 and report["missing_views"] == []
    assert report["dense"] == "plane-sweep NCC (CPU, torch)" and report["sparse_points"] > 500
    assert 0.02 < report["surface_area_m2"] < 0.2 and report["holes"] >= 1


def test_scan_landmarks_and_fitted_head(scan_outputs, truth, processed_sample, sample_session):
    """Scan landmarks against the true ones, then the fitted head against the true surface.
    Tolerances: dlib on rendered views triangulated over ~20 views is a few mm off on the inner
    points (its jaw contour is a silhouette, not a surface point: left out); a linear head with
    100 identity modes fitted directly to this real scan reaches a 2.8 mm landmark median and a
    0.8 mm face-area median (bench/scan.py), so through photogrammetry: ≤ 4 mm and ≤ 1.5 mm."""
    with np.load(scan_outputs["scan_landmarks.npz"]) as d:
        landmarks, residual = d["landmarks"], d["residual_px"]
    inner = np.linalg.norm(landmarks[17:] - truth["landmarks"][17:], axis=1) * 1000
    assert np.isfinite(inner).all() and np.median(inner) < 6.0, np.median(inner)
    assert np.nanmedian(residual) < 6.0  # px, 512×640 photos

    fit = json.loads(scan_outputs["scan_fit.json"].read_text())
    shape_info = json.loads((Path(processed_sample["out"]) / "sessions/sample000/subject_shape.json").read_text())
    assert shape_info["source"] == "light-stage scan fit" and shape_info["shape"] == fit["shape"]
    assert fit["flags"] == shape_info["flags"] == []  # photographed landmarks, a fit that meets them
    model = load_flame(Path(processed_sample["out"]) / "assets" / "flame-ict")
    fitted = np.asarray(o3d.io.read_triangle_mesh(str(scan_outputs["fitted_flame.ply"])).vertices)
    fitted_lmk = np.einsum("lc,lcx->lx", model.lmk_bary_coords, fitted[model.faces[model.lmk_faces_idx]])
    lmk_error = np.linalg.norm(fitted_lmk[17:] - truth["landmarks"][17:], axis=1) * 1000
    assert np.median(lmk_error) < 4.0, np.median(lmk_error)
    face = scan_fit.face_area_distance(truth["samples"], fitted, model.faces, model.masks["face"],
                                       truth["landmarks"]) * 1000
    assert len(face) > 5000 and np.median(face) < 1.5 and np.percentile(face, 90) < 5.0, np.percentile(face, [50, 90])
    if truth["source"] == "stand-in head":  # the model can represent it: the shape itself is recovered
        true_shape = np.asarray(json.loads((sample_session / "ground_truth" / "ground_truth.json")
                                           .read_text())["light_stage"]["shape"])
        error = np.linalg.norm(head_mesh(model, np.asarray(fit["shape"]))[0] - head_mesh(model, true_shape)[0], axis=1)
        assert error[model.masks["face"]].mean() * 1000 < 1.5

    # The motion sequences use the fitted shape.
    motion = next(Path(processed_sample["out"]).glob("sessions/sample000/takes/*/flame_sequence/*/*_motion.parquet"))
    meta = pq.read_schema(motion).metadata
    assert meta[b"shape_source"] == b"light-stage scan fit"
    np.testing.assert_allclose(json.loads(meta[b"shape"]), fit["shape"])


def test_missing_views_are_reported_and_the_rest_used(sample_session, tmp_path):
    """A light stage whose photos are missing for most cameras: every missing view is named in the
    report and the scan is made from the rest (every third camera of the rig, 3 of them lost too:
    14 views, so the test reconstructs a quarter of the photos)."""
    from singinghead.schemas.manifest import load_manifest

    shutil.copytree(sample_session / "light_stage", tmp_path / "session" / "light_stage")
    photos = sorted((tmp_path / "session" / "light_stage/photos").glob("*.jpg"))
    kept = photos[::3]
    gone = sorted({p.stem for p in photos} - {p.stem for p in kept} | {kept[3].stem, kept[8].stem, kept[13].stem})
    for name in gone:
        (tmp_path / "session" / "light_stage/photos" / f"{name}.jpg").unlink()
    light_stage = load_manifest(sample_session).light_stage
    refs = photogrammetry.scan_for_subject(str(tmp_path / "session"), "sample000", light_stage, str(tmp_path / "out"))
    report = json.loads(Path(next(r.url for r in refs if r.meta["kind"] == "scan_report")).read_text())
    assert report["missing_views"] == gone and report["views"] == len(photos) - len(gone) == 14
    assert report["points"] > 10_000  # dense points from the views left


def test_too_few_views_is_an_error(session_copy):
    photos = session_copy / "light_stage/photos"
    for p in sorted(photos.glob("*.jpg"))[5:]:
        p.unlink()
    with pytest.raises(InputError, match="only 5 light-stage views usable"):
        load_rig(photos, session_copy / "light_stage/calibration.json")


def _box_depths(cam, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    z = (corners @ cam.R.T + cam.t)[:, 2]
    return float(z.min()), float(z.max())


def test_dense_stereo_on_real_temple_photos(shared_data, tmp_path):
    """The dense CPU stage on real calibrated photos: 4 neighbouring views of Middlebury's temple
    (templeSparseRing) at half resolution, depth searched over the object's published bounding
    box. Its true surface is not public: the points must lie on the object (inside that tight box
    ± 5 mm; a sparse ring of 4 views sees the grey cloth under it too, and depth edges against
    the black backdrop fatten by a pixel or two: ≥ 95 %), and many (the 16-view bench: > 100 000)."""
    from singinghead.samples import middlebury
    from singinghead.tasks import mvs

    folder = shared_data / "multiview" / "middlebury_templeSparseRing"
    rig = load_rig(folder, middlebury.rig_json(folder / "templeSR_par.txt", tmp_path / "calibration.json"))
    lo, hi = middlebury.bounding_box(folder / "README.txt")
    cams = rig.cameras[:4]
    params = mvs.StereoParams(scale=0.5, planes=64, neighbours=3)
    views = [mvs.View(c, *mvs.load_view(c, params.scale), _box_depths(c, lo, hi)) for c in cams]
    nbrs = mvs.choose_neighbours(cams, params)
    assert all(nbrs)
    points = []
    for i, view in enumerate(views):
        mvs.sweep(view, [views[j] for j in nbrs[i]], params)
    for i, view in enumerate(views):
        points.append(mvs.consistent_points(view, [views[j] for j in nbrs[i]], params))
    points = np.concatenate(points)
    inside = np.all((points >= lo - 0.005) & (points <= hi + 0.005), axis=1)
    assert len(points) > 10000 and inside.mean() >= 0.95, (len(points), inside.mean())


def test_low_texture_photos_fail_with_the_measured_cause(sample_session, tmp_path):
    """Photos of a smooth, texture-poor surface (the sample's views blurred flat): the step fails
    naming what it measured (matches per view pair, views without matches, how much of a photo
    has texture) and the likely cause — not the calibration, which is right."""
    calib = _calibration(sample_session)
    cams = calib["cameras"][12:24]  # the −5° ring
    (tmp_path / "photos").mkdir()
    for cam in cams:
        photo = cv2.imread(str(sample_session / "light_stage/photos" / cam["image"]))
        cv2.imwrite(str(tmp_path / "photos" / cam["image"]), cv2.GaussianBlur(photo, (0, 0), 12))
    (tmp_path / "calibration.json").write_text(json.dumps(dict(calib, cameras=cams)))
    rig = load_rig(tmp_path / "photos", tmp_path / "calibration.json")
    with pytest.raises(InputError) as err:
        photogrammetry.reconstruct_scan(rig)
    message = str(err.value)
    assert "calibration.json" in message and "points reconstructed from the light-stage photos" in message
    assert "view pairs have verified SIFT matches" in message and "% of a photo has texture" in message
    assert "too little texture" in message and "calibration does not fit" not in message
