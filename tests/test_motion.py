"""FLAME motion of the processed sample session against its known head motion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import roma
import torch

from singinghead.schemas import motion as layout
from singinghead.storage import files
from singinghead.tasks import flame_fit

FLIP = np.diag([1.0, -1.0, -1.0])  # FLAME model axes → camera axes


def image_roll_deg(motion: np.ndarray) -> np.ndarray:
    """In-plane head rotation seen by the camera (clockwise on screen positive) from global ∘ neck."""
    g = roma.rotvec_to_rotmat(torch.as_tensor(motion[:, layout.GLOBAL_ORIENT]))
    n = roma.rotvec_to_rotmat(torch.as_tensor(motion[:, layout.NECK]))
    r = FLIP @ (g @ n).numpy() @ FLIP
    return np.degrees(np.arctan2(r[:, 1, 0], r[:, 0, 0]))


@pytest.fixture(scope="module")
def segments(processed_sample, sample_session):
    out = []
    for take, urls in processed_sample["first"]["motion"].items():
        truth = np.load(sample_session / f"ground_truth/{take}_frames.npz")
        for url in urls:
            table, shape = flame_fit.read_motion(url)
            out.append((take, url, table.to_pydict(), shape, truth))
    return out


def test_every_segment_has_59d_motion(processed_sample, segments):
    crop_segments = {take: len(urls) for take, urls in processed_sample["first"]["segments"].items()}
    assert {take: len(urls) for take, urls in processed_sample["first"]["motion"].items()} == crop_segments
    for _take, url, t, shape, _ in segments:
        motion = np.asarray(t["motion"])
        assert motion.shape[1] == layout.MOTION_DIM and np.isfinite(motion).all(), url
        assert shape.shape == (layout.SHAPE_DIM,)
        assert t["frame"] == list(range(len(motion)))
        assert len(motion) >= 90  # ≥ 3 s segments
    info = files.read_json(processed_sample["first"]["subject_shape"])
    # the sample session has a light stage: its scan fit is the final shape, from the monocular mean
    assert info["source"] == "light-stage scan fit" and len(info["shape"]) == 100 and info["frames"] > 500
    assert len(info["monocular_shape"]) == 100
    np.testing.assert_allclose(segments[0][3], info["shape"])


def test_the_monocular_shape_does_not_depend_on_the_order_takes_finish_in(processed_sample):
    """The subject's shape is part of the sequences' catalog key: the same frame fits listed in
    another order (another take finished first) must give it to the last bit, or a re-run of an
    unchanged session would redo every sequence."""
    from singinghead.storage.catalog import Catalog

    refs = [r for e in Catalog(processed_sample["out"]).entries(flame_fit.STEP_FRAMES) for r in e.outputs
            if r.meta.get("kind") == "flame_frames"]
    assert len({r.url.split("/takes/")[1].split("/")[0] for r in refs}) >= 2  # frames of several takes
    shape, frames = flame_fit.subject_shape(refs)
    reordered, same_frames = flame_fit.subject_shape(refs[::-1])
    assert shape.tobytes() == reordered.tobytes() and frames == same_frames
    info = files.read_json(processed_sample["first"]["subject_shape"])
    assert np.array_equal(shape, info["monocular_shape"])


def test_head_roll_follows_the_known_motion(segments):
    for _take, url, t, _, truth in segments:
        roll = image_roll_deg(np.asarray(t["motion"]))
        true_roll = truth["roll_deg"][np.asarray(t["source_frame"])]  # counter-clockwise on screen
        # up to the resting roll of the photo's face: −roll tracks the truth within a degree
        residual = (-roll - np.mean(-roll)) - (true_roll - true_roll.mean())
        assert np.corrcoef(-roll, true_roll)[0, 1] > 0.97, url
        assert np.abs(residual).mean() < 1.0, url


def test_jaw_and_distance_follow_the_known_motion(segments, processed_sample, sample_session):
    import json

    from singinghead.flame.layer import FlameLayer
    from singinghead.flame.model import load_flame

    layer = FlameLayer(load_flame(Path(processed_sample["out"]) / "assets" / "flame-ict"), dtype=torch.float64)
    f = json.loads((sample_session / "ground_truth/ground_truth.json").read_text())["camera"]["K"][0][0]
    for _take, url, t, shape, truth in segments:
        src = np.asarray(t["source_frame"])
        motion = np.asarray(t["motion"])
        assert np.corrcoef(motion[:, layout.JAW.start], truth["jaw_px"][src])[0, 1] > 0.9, url
        # the portrait shrinks as the head breathes away: depth follows 1 / scale. The photo is
        # flat and the ICT head is not: part of a few-per-cent scale change is absorbed by the
        # expression, so the correlation is ≈ 0.7 (0.9 with a head made from the photo itself).
        z = np.asarray(t["translation"])[:, 2]
        assert np.corrcoef(z, 1 / truth["scale"][src])[0, 1] > 0.6, url
        # and its value: a pinhole camera shows the fitted head's 51 inner landmarks (neutral face;
        # RMS spread D m about their centre, lying a m in front of the head's origin) with a spread
        # of f·D / (z − a) px; the true landmarks say what spread they had on the 4K canvas (focal f
        # of the true K), so z ≈ a + f·D / d frame by frame (the head only rolls). Within 6 %: the
        # photo's face has its own proportions (eyes alone give +3 %, the 51 points −3 %).
        zero = torch.zeros(1, 3, dtype=torch.float64)
        neutral = torch.zeros(1, 50, dtype=torch.float64)
        head = torch.as_tensor(shape, dtype=torch.float64)[None]
        inner = layer.landmarks(head, neutral, zero, zero, zero)[0, 17:].numpy()
        spread = np.sqrt(((inner[:, :2] - inner[:, :2].mean(0)) ** 2).sum(-1).mean())
        seen = truth["landmarks"][src, 17:]
        d_true = np.sqrt(((seen - seen.mean(1, keepdims=True)) ** 2).sum(-1).mean(1))
        z_true = inner[:, 2].mean() + f * spread / d_true
        assert np.median(np.abs(z / z_true - 1)) < 0.06, (url, np.median(z), np.median(z_true))


def test_reprojection_error_is_reported_and_small(segments):
    for _take, url, t, _, _ in segments:
        err = np.asarray(t["reprojection_error_px"], dtype=float)
        assert np.isfinite(err).all()
        assert np.median(err) < 12.0, url  # px at 1024²: a face ≈ 400 px wide
        assert all(set(o) <= {"shape", "expression", "pose", "jaw", "translation"} for o in t["outliers"])


def test_motion_table_schema(segments):
    url = segments[0][1]
    schema = pq.read_schema(url)
    assert schema.remove_metadata() == layout.MOTION_SCHEMA
    assert {b"shape", b"shape_source", b"flame_model"} <= set(schema.metadata)
