"""Ready-made scans (light_stage: {scan, units, landmarks}) instead of light-stage photos.

Truth: the real face scan of ../shared/data (James, in mm) with its 68 hand-placed landmarks, which
the landmarks found on views rendered from the scan are checked against; and the sample's stand-in
head of a known shape exported as a scanner would hand it over (PLY, mm, vertex colours), whose
fitted shape must come back through the whole flow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import yaml
from conftest import ORCHESTRATION_FIT_STEPS
from scipy.spatial.transform import Rotation

from singinghead.capture_rigs.scan_files import read_landmarks, read_scan
from singinghead.schemas.errors import InputError, ManifestError
from singinghead.schemas.manifest import LightStage, load_manifest
from singinghead.tasks import scan_import


@pytest.fixture(scope="module")
def james(shared_data, tmp_path_factory) -> Path:
    """A session folder holding the real scan as a lab would put it there (OBJ + MTL + texture)."""
    folder = tmp_path_factory.mktemp("james")
    (folder / "scans").mkdir()
    for f in (shared_data / "face_scan").glob("james.*"):
        shutil.copyfile(f, folder / "scans" / f.name)
    return folder


def _inner_error_mm(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-landmark distance, inner points only (dlib's jaw contour is a silhouette, not a surface point)."""
    return np.linalg.norm(found[17:] - truth[17:], axis=1) * 1000


def _file_order_points(james: Path) -> np.ndarray:
    """The real scan's 68 landmarks (mm) in its file's own label-group order, not dlib's."""
    ljson = json.loads((james / "scans" / "james.ljson").read_text())
    return np.asarray(ljson["groups"]["LJSON"]["landmarks"]["points"], dtype=np.float64)


def test_a_manifest_names_a_scan_with_its_units(sample_session, tmp_path):
    """A scan needs units; photos and a scan are not both given; paths are checked like the others."""
    session = tmp_path / "session"
    session.mkdir()
    raw = yaml.safe_load((sample_session / "session.yaml").read_text())
    for take in raw["takes"]:  # the takes' files are not what this test is about: one tiny file stands in
        for key in ("video", "mic"):
            take[key] = "x.bin"
        take["song"]["file"] = "x.bin"
    (session / "x.bin").write_bytes(b"x")

    def problems(light_stage: dict) -> str:
        (session / "session.yaml").write_text(yaml.safe_dump({**raw, "light_stage": light_stage}))
        with pytest.raises(ManifestError) as err:
            load_manifest(session)
        return str(err.value)

    assert "needs its units" in problems({"scan": "head.obj"})
    assert "light_stage.units: Input should be 'm', 'cm' or 'mm' (got 'inch')" in problems(
        {"scan": "head.obj", "units": "inch"})
    assert "light_stage: give photos and calibration, or a ready-made scan" in problems({"units": "mm"})
    assert "not both" in problems({"scan": "head.obj", "units": "mm", "photos": "p", "calibration": "c.json"})
    assert "light_stage.scan 'head.obj': file not found" in problems({"scan": "head.obj", "units": "mm"})
    (session / "head.obj").write_text("v 0 0 0\n")
    (session / "session.yaml").write_text(yaml.safe_dump({**raw, "light_stage": {"scan": "head.obj", "units": "mm"}}))
    assert load_manifest(session).light_stage == LightStage(scan="head.obj", units="mm")


def test_wrong_units_are_refused_with_the_unit_that_fits(james):
    obj = james / "scans" / "james.obj"
    with pytest.raises(InputError, match=r"spans 321\.2 m.*in mm it would be a head") as err:
        read_scan(obj, "m")
    assert err.value.path == str(obj)
    with pytest.raises(InputError, match="in mm it would be a head"):
        read_scan(obj, "cm")
    assert np.ptp(read_scan(obj, "mm").vertices, axis=0).max() == pytest.approx(0.3212, abs=1e-3)


def test_landmarks_as_text_in_dlib_order(james, tmp_path):
    """68 lines of x y z (the scan's units, dlib's order) read the same as the LJSON they came from;
    a file with another count, or landmarks off the scan, are refused naming the file."""
    truth = read_landmarks(james / "scans" / "james.ljson")
    text = tmp_path / "lmk.txt"
    text.write_text("# x y z in mm\n" + "\n".join(f"{x}, {y}, {z}" for x, y, z in truth))
    np.testing.assert_array_equal(read_landmarks(text), truth)
    short = tmp_path / "short.txt"
    short.write_text("\n".join(" ".join(map(str, p)) for p in truth[:60]))
    with pytest.raises(InputError, match="68 lines") as err:
        read_landmarks(short)
    assert err.value.path == str(short)

    def refused(name: str, points: np.ndarray) -> str:
        (james / "scans" / name).write_text("\n".join(" ".join(map(str, p)) for p in points))
        with pytest.raises(InputError) as err:
            scan_import.import_scan(james, LightStage(scan="scans/james.obj", units="mm", landmarks=f"scans/{name}"))
        assert err.value.path == str(james / "scans" / name)
        return err.value.problem

    assert "outer eye corners" in refused("in_metres.txt", truth / 1000)
    assert "do not make a face in dlib's order: the nose tip (point 31) stands -1.10 " in refused(
        "label_group_order.txt", _file_order_points(james))
    mirrored = [16 - i for i in range(17)] + [26 - i for i in range(5)] + [21 - i for i in range(5)] + \
        [27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + \
        [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
    assert sorted(mirrored) == list(range(68))
    assert "stands -0.48 inter-ocular distances" in refused("mirrored.txt", truth[mirrored])  # behind the face
    assert scan_import.nose_protrusion(truth) == pytest.approx(0.48, abs=0.01)
    assert "mm off the scan's surface" in refused("elsewhere.txt", truth + [0.0, 0.0, 60.0])  # another frame


def test_landmarks_found_on_a_real_scan_match_the_hand_placed_ones(james):
    """No landmarks given: the face is found on views rendered from the real scan, dlib's points
    triangulated across them. Against the scan's hand-placed landmarks: the photo path reaches
    ≈ 3 mm inner median on this scan (test_light_stage); rendering the scan directly measured
    3.1 mm median, 6.0 mm p90. Then the same scan turned z-up, rolled 30° and moved: the search
    must find the face under another up axis and give the points, moved (measured 4.0 mm median,
    7.0 mm p90; the photo path's test allows 6)."""
    scan, landmarks, _, _ = scan_import.import_scan(james, LightStage(scan="scans/james.obj", units="mm"))
    truth = read_scan(james / "scans" / "james.obj", "mm", james / "scans" / "james.ljson").landmarks
    error = _inner_error_mm(landmarks, truth)
    report = scan.report["landmarks"]
    assert report["source"] == "found on views rendered from the scan" and report["landmarks_triangulated"] == 68
    assert np.median(error) < 4.0 and np.percentile(error, 90) < 8.0, np.percentile(error, [50, 90])
    assert scan.report["units"] == "mm" and scan.report["holes"] < 20  # one surface, not a triangle soup
    assert len(scan.points) == scan_import.POINTS

    turn = Rotation.from_euler("xz", [-90, 30], degrees=True).as_matrix()  # y-up → z-up, rolled 30°
    shift = np.array([0.4, -0.2, 1.1])
    moved = read_scan(james / "scans" / "james.obj", "mm")
    moved = type(moved)(moved.vertices @ turn.T + shift, moved.triangles, None, moved.triangle_uvs, moved.texture)
    found, _, _, moved_report = scan_import.find_landmarks(moved, james / "scans" / "james.obj")
    assert moved_report["search_views"] > scan_import.SEARCH_AZIMUTHS  # +y had no upright face: another axis
    moved_error = _inner_error_mm(found, truth @ turn.T + shift)
    assert np.median(moved_error) < 5.0, np.median(moved_error)  # measured 4.0 (its views sit a little differently)


def test_a_scan_without_colour_is_flagged(james, tmp_path):
    """Grey renders of the bare geometry: the detector still finds this face, but dlib's points on
    shading alone are worse (measured 6.0 mm inner median, some points off by centimetres): the
    report says so, and asks for the scan's own landmarks."""
    mesh = o3d.io.read_triangle_mesh(str(james / "scans" / "james.obj"))
    bare = tmp_path / "bare.ply"
    o3d.io.write_triangle_mesh(str(bare), o3d.geometry.TriangleMesh(mesh.vertices, mesh.triangles))
    grey = read_scan(bare, "mm")
    assert not grey.has_colour
    found, _, _, report = scan_import.find_landmarks(grey, bare)
    assert report["coloured"] is False and "give the scan's landmarks" in report["warning"]
    from singinghead.tasks.scan_fit import fit_flags
    fitted_well = {"landmark_residual_mm": {"median": 2.8, "max": 7.0}}  # the textured scan's fit (bench/scan.py)
    assert fit_flags({"landmarks": report}, fitted_well) == [f"scan landmarks {report['warning']}"]
    truth = read_scan(james / "scans" / "james.obj", "mm", james / "scans" / "james.ljson").landmarks
    assert np.median(_inner_error_mm(found, truth)) < 8.0


def test_a_scan_fit_that_misses_its_landmarks_is_flagged(james, tmp_path):
    """The real scan fitted with its hand-placed landmarks in dlib's order ends 2.7 mm (median) from
    them: its shape carries no flag. Fitted to the same points in the file's own label-group order
    (which the import refuses, above; a scan fit given them another way must still not pass
    silently) it ends 26 mm (median) from them: flagged, so every window of the subject says so."""
    import torch

    from singinghead.flame.ict import write_model
    from singinghead.flame.layer import FlameLayer
    from singinghead.flame.model import load_flame
    from singinghead.tasks import scan_fit

    scan, landmarks, _, _ = scan_import.import_scan(
        james, LightStage(scan="scans/james.obj", units="mm", landmarks="scans/james.ljson"))
    layer = FlameLayer(load_flame(write_model(tmp_path / "flame")), dtype=torch.float64)
    flags = {}
    for name, points in (("dlib order", landmarks), ("label-group order", _file_order_points(james) / 1000)):
        fit = scan_fit.fit_scan(layer, scan.points, points, init_shape=None)
        flags[name] = scan_fit.fit_flags(scan.report, fit.report)
        median = fit.report["landmark_residual_mm"]["median"]
        assert (median < 4.0) if name == "dlib order" else (median > 15.0), (name, median)
    assert flags["dlib order"] == []
    assert len(flags["label-group order"]) == 1 and flags["label-group order"][0].startswith("scan fit landmarks ")


def _linked_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """A copy of a folder made of hard links: the pipeline replaces its outputs atomically and never
    writes a file in place, so the original stays as it was (a test changing a file unlinks it first)."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns(*skip))


def test_the_sample_head_as_a_scan_in_mm_goes_through_the_flow(sample_session, processed_sample, tmp_path,
                                                               monkeypatch):
    """The sample session with its light stage replaced by the stand-in head of a known shape,
    exported as a PLY in mm with vertex colours and no landmarks, processed into a copy of the
    processed sample: the takes' steps are up to date, the scan is imported and its landmarks
    found, the scan fit recovers the known shape (the model can represent this head exactly:
    the photo path's test allows 1.5 mm mean on the face) and the motion uses it (refitted with
    the orchestration tests' sequence steps: this test is about the scan, the sample's own
    motion is checked at the default steps)."""
    from singinghead.flame.model import load_flame
    from singinghead.flows.process_session import LIGHT_STAGE, run_process_session
    from singinghead.samples.light_stage import export_head_scan, head_mesh

    session, out = tmp_path / "session", tmp_path / "out"
    _linked_copy(sample_session, session, skip=("ground_truth", "light_stage"))
    _linked_copy(processed_sample["out"], out)
    model = load_flame(out / "assets" / "flame-ict")
    true_shape = np.random.default_rng(11).normal(0.0, 1.0, 100)
    (session / "scans").mkdir()
    true_landmarks = export_head_scan(session / "scans" / "sub07.ply", model, true_shape, units="mm")
    manifest = yaml.safe_load((session / "session.yaml").read_text())
    manifest["light_stage"] = {"scan": "scans/sub07.ply", "units": "mm"}
    (session / "session.yaml").unlink()  # a link to the sample's own manifest: written anew, not through it
    (session / "session.yaml").write_text(yaml.safe_dump(manifest))

    steps = "SINGINGHEAD_FLAME_SEQUENCE_STEPS"  # the frame fits (their own steps) are up to date
    monkeypatch.setenv(steps, ORCHESTRATION_FIT_STEPS[steps])
    summary = run_process_session(session, out)
    assert summary["crop_submitted"] == [] and summary["audio_submitted"] == []  # the takes: up to date
    assert LIGHT_STAGE in summary["scan_submitted"]
    light = summary["light_stage"]
    assert light["status"] == "ok", light
    by_name = {Path(u).name: Path(u) for u in light["scan"] + light["fit"]}
    report = json.loads(by_name["scan_report.json"].read_text())
    assert report["source"] == "ready-made scan" and report["landmarks"]["source"].startswith("found")
    with np.load(by_name["scan_landmarks.npz"]) as d:
        found = d["landmarks"]
    assert np.median(_inner_error_mm(found, true_landmarks)) < 6.0  # as the photo path's test

    fit = json.loads(by_name["scan_fit.json"].read_text())
    error = np.linalg.norm(head_mesh(model, np.asarray(fit["shape"]))[0] - head_mesh(model, true_shape)[0], axis=1)
    assert error[model.masks["face"]].mean() * 1000 < 1.5
    shape = json.loads((out / "sessions" / "sample000" / "subject_shape.json").read_text())
    assert shape["source"] == "light-stage scan fit" and shape["shape"] == fit["shape"] and shape["flags"] == []
    assert sorted(summary["flame_submitted"]) == sorted(t["id"] for t in manifest["takes"])  # new shape: new motion
