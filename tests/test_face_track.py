"""The per-frame face track on real faces: dlib's box convention, no drift, honest failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
from conftest import SHARED_DATA

from singinghead.storage.assets import dlib_landmark_model, ffmpeg_exe
from singinghead.tasks.landmarks import DLIB_BOX_FROM_MTCNN, dense_landmarks, face_analyser


def _frames(path, step: int, width: int = 512, limit: int | None = None) -> list[np.ndarray]:
    """Every `step`-th frame (the first `limit` frames only, when given), shrunk to `width`."""
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if limit is not None and i >= limit:
                break
            if i % step == 0:
                img = f.to_ndarray(format="rgb24")
                s = width / img.shape[1]
                out.append(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    return out


def _dlib_own_points(clip: Path, step: int, width: int, limit: int | None = None) -> list[np.ndarray | None]:
    """dlib's own 68 points (its HOG detector's box, 1× upsampling, then its predictor) on the frames
    `_frames` gives; None where HOG finds no face. The truth the face track is held to."""
    import dlib

    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(dlib_landmark_model())
    points = []
    for img in _frames(clip, step, width, limit):
        faces = detector(img, 1)
        points.append(np.array([[p.x, p.y] for p in predictor(img, faces[0]).parts()], dtype=float)
                      if faces else None)
    return points


#: The jumping-face test: the first 96 frames of clip4 at 560 px; the box test: clip2, every 5th frame.
JUMPING = ("clip4.mp4", 1, 560, 96)
SPARSE = ("clip2.mp4", 5, 512, None)


def _dlib_box_in_mtcnn_box(clips: Path) -> list[list[float]]:
    """Where dlib's HOG detector puts its box (the one its 68-point predictor was trained on)
    relative to MTCNN's (centre shift and size in MTCNN box widths and heights), on every 6th
    frame of the real clips where each finds exactly one face."""
    import dlib

    hog, analyser = dlib.get_frontal_face_detector(), face_analyser("cpu")
    rows = []
    for clip in sorted(clips.glob("clip*.mp4")):
        for img in _frames(clip, 6):
            boxes, probs = analyser.detect(img)
            dets = hog(img, 1)
            if len(boxes) != 1 or len(dets) != 1:
                continue
            m, d = boxes[0], dets[0]
            w, h = m[2] - m[0], m[3] - m[1]
            rows.append([((d.left() + d.right()) / 2 - (m[0] + m[2]) / 2) / w,
                         ((d.top() + d.bottom()) / 2 - (m[1] + m[3]) / 2) / h,
                         (d.right() - d.left()) / w, (d.bottom() - d.top()) / h])
    return rows


def background_builds(tmp_path_factory) -> dict:
    """The measurement over the five clips (HOG at 2× upsampling and MTCNN on every 6th frame) and
    dlib's own points on the frames the other tests use (their truth), made in the background
    while the tests before this module run (conftest.prebuilt)."""
    if not SHARED_DATA.is_dir():
        return {}
    clips = SHARED_DATA / "talking_face"
    return {"dlib_boxes": [(_dlib_box_in_mtcnn_box, (clips,))],
            "jumping_truth": [(_dlib_own_points, (clips / JUMPING[0], *JUMPING[1:]))],
            "sparse_truth": [(_dlib_own_points, (clips / SPARSE[0], *SPARSE[1:]))]}


def test_dlib_box_convention_is_the_measured_one(shared_data, prebuilt):
    """MTCNN's box mapped to the box dlib's HOG detector gives, re-measured on the five real clips."""
    rows = prebuilt["dlib_boxes"][0].result()
    assert len(rows) > 80
    measured = np.median(np.asarray(rows), axis=0)
    expected = [DLIB_BOX_FROM_MTCNN[k] for k in ("dx", "dy", "width", "height")]
    np.testing.assert_allclose(measured, expected, atol=0.03)


def test_a_jumping_real_face_is_tracked_and_a_missing_face_is_nan(shared_data, prebuilt, tmp_path):
    """A real clip on a 1024² portrait whose face jumps 180 px every 8 frames and vanishes for
    6 frames: every frame with a face is within 0.08 inter-ocular distances of dlib's own
    detection on the unmoved frame (mapped by the known shift), every frame without one is NaN
    with confidence 0. A tracker that takes its box from the last frame's landmarks fails both."""
    name, step, width, limit = JUMPING
    clip = _frames(shared_data / "talking_face" / name, step, width, limit)
    own = prebuilt["jumping_truth"][0].result()
    size, n = 1024, len(clip)
    assert len(own) == n == limit
    offsets = [np.array([60 + 180 * ((i // 8) % 3), 80 + 120 * ((i // 8) % 2)]) for i in range(n)]
    hidden = set(range(40, 46))
    truth = np.full((n, 68, 2), np.nan)
    video = tmp_path / "portrait.mp4"
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{size}x{size}", "-r", "30", "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
           str(video)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i, img in enumerate(clip):
        canvas = np.full((size, size, 3), 40, np.uint8)
        if i not in hidden:
            x, y = offsets[i]
            canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
            if own[i] is not None:
                truth[i] = own[i] + offsets[i]
        proc.stdin.write(canvas.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0

    dense = dense_landmarks(str(video))
    assert len(dense.landmarks) == n
    for i in hidden:
        assert np.isnan(dense.landmarks[i]).all() and dense.confidence[i] == 0.0
    seen = np.isfinite(truth).all(axis=(1, 2))
    assert seen.sum() > 80 and np.isfinite(dense.landmarks[seen]).all()
    iod = np.linalg.norm(truth[seen, 36:42].mean(1) - truth[seen, 42:48].mean(1), axis=1)
    err = np.linalg.norm(dense.landmarks[seen] - truth[seen], axis=2).mean(1) / iod
    assert np.percentile(err, 95) < 0.08, np.percentile(err, [50, 95])
    assert dense.confidence[seen].min() > 0.5
    assert np.nanmax(dense.mouth_opening) > 2 * np.nanmin(dense.mouth_opening)  # a talking mouth, not a copy


def test_sparse_crop_landmarks_use_the_same_box_convention(shared_data, prebuilt):
    """The crop step's landmarks (FaceAnalyser.landmarks on an MTCNN box) agree with dlib's own."""
    analyser = face_analyser("cpu")
    name, step, width, limit = SPARSE
    frames = _frames(shared_data / "talking_face" / name, step, width, limit)
    dlib_own = prebuilt["sparse_truth"][0].result()
    assert len(dlib_own) == len(frames)
    errs = []
    for img, own in zip(frames, dlib_own, strict=True):
        boxes, probs = analyser.detect(img)
        if not len(boxes) or own is None:
            continue
        ours = analyser.landmarks(img, boxes[int(np.argmax(probs))])
        iod = np.linalg.norm(own[36:42].mean(0) - own[42:48].mean(0))
        errs.append(np.linalg.norm(ours - own, axis=1).mean() / iod)
    # dlib's points move with its box: a box mapped from another detector reproduces them to a few
    # per cent of the inter-ocular distance (the face's own IOD is ≈ 100 px here)
    assert len(errs) > 15 and np.median(errs) < 0.04 and max(errs) < 0.08, (np.median(errs), max(errs))
