"""Cropping and serialisation against the sample session's ground truth."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.samples import video
from singinghead.schemas.segments import SEGMENT_SCHEMA
from singinghead.storage.assets import ffmpeg_exe
from singinghead.tasks.crop import EDGE_LANDMARKS, CropParams, analyse_take, crop_take

P = CropParams()
BYSTANDER_4K = (650.0, 1300.0)  # where the second person's face centre stands, 4K canvas px


def _segments(processed, take):
    d = next((Path(processed["out"]) / "sessions/sample000/takes" / take / "crop").iterdir())
    table = pq.read_table(d / "segments.parquet")
    return d, table, json.loads((d / "summary.json").read_text())


@pytest.fixture(scope="module")
def gt(sample_session):
    info = json.loads((sample_session / "ground_truth/ground_truth.json").read_text())
    frames = {t: np.load(sample_session / f"ground_truth/{t}_frames.npz") for t in info["takes"]}
    return info, frames


def _inset(points: np.ndarray, box) -> float:
    """How far inside the square box (x0, y0, side) the points are, at the closest."""
    x0, y0, side = box
    return min((points[:, 0] - x0).min(), (points[:, 1] - y0).min(),
               (x0 + side - points[:, 0]).min(), (y0 + side - points[:, 1]).min())


def test_segment_table_schema_and_files(processed_sample, sample_session):
    for take in ("take01", "take02"):
        d, table, summary = _segments(processed_sample, take)
        assert table.schema.equals(SEGMENT_SCHEMA)
        rows = table.to_pylist()
        assert summary["segments_kept"] == len(rows) >= 2
        with KinectRecording(sample_session / f"takes/{take}/kinect.mkv") as rec:
            ts = rec.timestamps()
        for row in rows:
            assert row["n_frames"] == row["frame_end"] - row["frame_start"] >= 90  # ≥ 3 s
            assert row["timestamps_s"] == pytest.approx(ts[row["frame_start"]:row["frame_end"]].tolist())
            with av.open(str(d / row["video"])) as c:
                s = c.streams.video[0]
                assert (s.codec_context.name, s.width, s.height, s.format.name) == ("h264", 1024, 1024, "yuv420p")
                assert float(s.average_rate) == pytest.approx(30, abs=0.05)
                assert sum(1 for p in c.demux(s) if p.size) == row["n_frames"]


def test_every_kept_frame_holds_the_true_face_with_margin(processed_sample, gt):
    info, frames = gt
    for take in info["takes"]:
        rows = _segments(processed_sample, take)[1].to_pylist()
        for row in rows:
            box = frames[take]["face_box"][row["frame_start"]:row["frame_end"]]
            x0, y0, side = row["crop_x0"], row["crop_y0"], row["crop_side"]
            slack = np.minimum.reduce([box[:, 0] - x0, box[:, 1] - y0, x0 + side - box[:, 2], y0 + side - box[:, 3]])
            # The cut rule keeps edge landmarks 6% of the side from the border at every check;
            # between checks (≤ 5 frames) the face may move a little closer, never out.
            assert slack.min() > 0.03 * side, (take, row["segment_index"], slack.min())


def test_cuts_follow_the_true_moves(processed_sample, gt):
    info, frames = gt
    for take, t in info["takes"].items():
        rows = _segments(processed_sample, take)[1].to_pylist()
        summary = _segments(processed_sample, take)[2]
        border_cuts = [c["frame"] for c in summary["cuts"] if "border" in c["reason"]]
        for when in t["cuts_s"]:  # a lean lasts 15 frames; checks come every 6
            start = round(when * 30)
            assert any(start <= c <= start + 15 + 6 for c in border_cuts), (take, when, border_cuts)
        # Every border cut is real: at the cut frame the true edge landmarks have reached the
        # margin of the box being cut (to within landmark precision), at its last checked
        # frame they had not.
        lmk = frames[take]["landmarks"][:, EDGE_LANDMARKS]
        boxes = {r["frame_end"]: (r["crop_x0"], r["crop_y0"], r["crop_side"]) for r in rows}
        for c in summary["cuts"]:
            if "border" in c["reason"] and (c["frame"] - 5) in boxes:
                box = boxes[c["frame"] - 5]
                margin = P.border_margin * box[2]
                assert _inset(lmk[c["frame"]], box) < margin + 12
                assert _inset(lmk[c["frame"] - 6], box) > margin - 12


def test_segment_counts_and_durations(processed_sample, gt):
    info, _ = gt
    _, t1, s1 = _segments(processed_sample, "take01")
    rows = t1.to_pylist()
    lean = round(info["takes"]["take01"]["cuts_s"][0] * 30)
    assert len(rows) == 2 and s1["segments_dropped"] == 0
    assert rows[0]["frame_start"] == 0 and lean <= rows[0]["frame_end"] <= lean + 21
    assert rows[1]["frame_start"] == rows[0]["frame_end"] + 5 and rows[1]["frame_end"] >= 595
    for take in info["takes"]:
        _, table, s = _segments(processed_sample, take)
        kept = sum(table.column("n_frames").to_pylist()) / 30
        dropped = sum(d["seconds"] for d in s["dropped"])
        assert s["seconds_kept"] == pytest.approx(kept, rel=1e-3)
        assert all(d["seconds"] < 3 for d in s["dropped"])
        # what is neither kept nor dropped is at most the ≤ 5 unchecked frames around each cut
        assert 20 - kept - dropped <= len(s["cuts"]) * 6 / 30 + 1e-6


def test_sparse_landmarks_match_the_animation(processed_sample, gt):
    """Detected 68 points vs the animated ones, in 1024² portrait pixels.

    The animated points are dlib's own landmarks on the source photo, carried through the known
    head motion and jaw field. With the mouth closed the whole shape agrees to a few pixels; an
    open mouth pulls dlib's shape model (jaw and brows follow the lips), so on every frame only the
    rigid eyes and nose (points 27–47) are held to the same bound.
    """
    info, frames = gt
    errors, closed = [], []
    for take in info["takes"]:
        for row in _segments(processed_sample, take)[1].to_pylist():
            lmk = np.array(row["landmarks_portrait"]).reshape(-1, 68, 2)
            truth = frames[take]["landmarks"][row["landmark_frames"]]
            truth = (truth - [row["crop_x0"], row["crop_y0"]]) * (1024 / row["crop_side"])
            errors.append(np.linalg.norm(lmk - truth, axis=2))
            closed.append(frames[take]["jaw_px"][row["landmark_frames"]] < 1.0)
            src = np.array(row["landmarks_source"]).reshape(-1, 68, 2)
            np.testing.assert_allclose((src - [row["crop_x0"], row["crop_y0"]]) * 1024 / row["crop_side"], lmk,
                                       atol=1e-2)
    err, closed = np.concatenate(errors), np.concatenate(closed)
    assert closed.sum() >= 20
    assert np.median(err[closed].mean(axis=1)) < 9.0
    assert np.median(err[:, 27:48]) < 7.0 and np.percentile(err[:, 27:48], 95) < 20.0


def test_portrait_frames_are_the_exact_source_frames(processed_sample, sample_session):
    d, table, _ = _segments(processed_sample, "take01")
    row = table.to_pylist()[1]
    x0, y0, side = row["crop_x0"], row["crop_y0"], row["crop_side"]
    k = 40
    with av.open(str(d / row["video"])) as c:
        portrait = next(f for i, f in enumerate(c.decode(video=0)) if i == k).to_ndarray(format="rgb24")
    with KinectRecording(sample_session / "takes/take01/kinect.mkv") as rec:
        src = {i: f for i, _, f in rec.frames(start=row["frame_start"] + k - 1, stop=row["frame_start"] + k + 2)}

    def psnr(i):
        ref = cv2.resize(src[i][y0:y0 + side, x0:x0 + side], (1024, 1024), interpolation=cv2.INTER_CUBIC)
        return cv2.PSNR(ref, portrait)

    here, before, after = (psnr(row["frame_start"] + k + o) for o in (0, -1, 1))
    assert here > 30 and here > before + 1 and here > after + 1


def _special_take(tmp: Path, seconds=10, hidden=range(0), second=False) -> tuple[Path, video.HeadMotion]:
    """A take made for one case of the segment rules (face gone, a bystander, damaged frames). The
    rules count frames and compare boxes, whatever the resolution, so it is recorded in the
    Kinect's 720p colour mode: the same scene at a ninth of the pixels (4K crops are checked on the
    sample session, the real clip below and the real-face takes)."""
    n = seconds * 30
    to_720p = video.COLOR_MODES["720P"][0] / video.WIDTH
    motion = dataclasses.replace(video.head_motion(n, np.zeros(n), [], np.random.default_rng(5)),
                                 canvas_scale=to_720p)
    other = None
    if second:
        other = video.HeadMotion(np.tile(BYSTANDER_4K, (n, 1)), np.zeros(n), np.full(n, 3.0), np.zeros(n),
                                 canvas_scale=to_720p)
    path = tmp / "take" / "kinect.mkv"
    path.parent.mkdir(parents=True)
    video.write_kinect_mkv(path, motion, 0, hidden=hidden, second_person=other, color_mode="720P")
    return path, motion


def test_face_absent_for_two_seconds_gives_two_segments(tmp_path):
    path, _ = _special_take(tmp_path, hidden=range(120, 180))
    refs = crop_take(path, "gone", str(tmp_path / "out"), P)
    rows = pq.read_table(tmp_path / "out/segments.parquet").to_pylist()
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert len(rows) == 2 and len([r for r in refs if r.meta.get("kind") == "portrait_video"]) == 2
    assert 114 <= rows[0]["frame_end"] <= 120 and 180 <= rows[1]["frame_start"] <= 186
    assert rows[1]["frame_end"] >= 294
    assert set(summary["frames_without_face"]) == set(range(120, 180, 6))
    assert summary["cuts"][0]["reason"] == "face lost at frame 120"


def test_two_faces_keep_the_largest(tmp_path):
    path, motion = _special_take(tmp_path, seconds=4, second=True)
    kept, summary, _ = analyse_take(path, P)
    assert len(kept) == 1 and summary.frames_with_several_faces[0] == 0
    assert "several faces" in summary.warnings[0]
    x0, y0, side = kept[0].box
    centre, bystander = motion.centre_xy[0] * motion.canvas_scale, np.multiply(BYSTANDER_4K, motion.canvas_scale)
    assert x0 < centre[0] < x0 + side and y0 < centre[1] < y0 + side  # the singer, not the bystander
    assert not (x0 < bystander[0] < x0 + side and y0 < bystander[1] < y0 + side)


def test_corrupted_frames_are_reported_and_the_rest_processed(tmp_path):
    path, _ = _special_take(tmp_path, seconds=8)
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as c:
        packets = [(p.pos, bytes(p)[:64]) for p in c.demux(c.streams.video[0]) if p.size]
    for pos, head in packets[100:106]:
        off = data.find(head, max(pos - 256, 0))
        data[off:off + 64] = bytes(64)
    path.write_bytes(bytes(data))
    crop_take(path, "damaged", str(tmp_path / "out"), P)
    rows = pq.read_table(tmp_path / "out/segments.parquet").to_pylist()
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["corrupt_frames"] == list(range(100, 106))
    assert summary["cuts"][0]["reason"] == "frame 100 cannot be decoded"
    assert "frames [100, 101, 102, 103, 104, 105] cannot be decoded" in summary["warnings"][0]
    assert len(rows) == 2 and rows[0]["frame_end"] <= 100 and rows[1]["frame_start"] >= 106
    assert rows[1]["frame_end"] >= 234


def test_real_talking_clip_in_a_4k_capture(shared_data, tmp_path):
    """A real person (clip4, 700² 30 fps) scaled and padded into a Kinect-style 4K MJPEG MKV."""
    mkv = tmp_path / "real" / "kinect.mkv"
    mkv.parent.mkdir()
    subprocess.run([
        ffmpeg_exe(), "-v", "error", "-i", str(shared_data / "talking_face/clip4.mp4"), "-an",
        "-vf", "scale=1400:1400,pad=3840:2160:1300:500:gray", "-c:v", "mjpeg", "-q:v", "6", "-pix_fmt", "yuvj422p",
        "-metadata:s:v:0", "title=COLOR", "-metadata:s:v:0", "K4A_COLOR_TRACK=1", str(mkv),
    ], check=True)
    crop_take(mkv, "real", str(tmp_path / "out"), P)
    rows = pq.read_table(tmp_path / "out/segments.parquet").to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["frame_start"] == 0 and row["n_frames"] >= 180 and row["min_detector_score"] > 0.9
    lmk = np.array(row["landmarks_source"]).reshape(-1, 68, 2)
    x0, y0, side = row["crop_x0"], row["crop_y0"], row["crop_side"]
    assert x0 >= 0 and x0 + side <= 3840 and y0 >= 0 and y0 + side <= 2160
    assert ((lmk[..., 0] > x0) & (lmk[..., 0] < x0 + side) & (lmk[..., 1] > y0) & (lmk[..., 1] < y0 + side)).all()
    centre = lmk.reshape(-1, 2).mean(axis=0)
    assert 1300 < centre[0] < 2700 and 500 < centre[1] < 1900  # the face of the clip
