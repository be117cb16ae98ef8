import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.schemas.errors import InputError
from singinghead.storage.assets import ffmpeg_exe


@pytest.fixture(scope="module")
def real_mkv(shared_data) -> Path:
    return shared_data / "azure_kinect" / "pyk4a_recording.mkv"


def test_real_recording_tracks_tags_timestamps(real_mkv):
    with KinectRecording(real_mkv) as rec:
        assert rec.color_stream.metadata["title"] == "COLOR"
        assert rec.color_mode == "MJPG_720P"
        assert rec.start_offset_ns == 336_277_000
        ts = rec.timestamps()
        assert ts.tolist() == pytest.approx([0.463945])  # block timestamp, µs time base
        probe = rec.probe()
        assert (probe.width, probe.height, probe.frames, probe.codec) == (1280, 720, 1, "mjpeg")
        assert probe.fps == pytest.approx(5.0)


def test_real_recording_calibration(real_mkv, shared_data):
    raw = json.loads((shared_data / "azure_kinect" / "pyk4a_calibration.json").read_text())
    p = next(c for c in raw["CalibrationInformation"]["Cameras"]
             if c["Location"] == "CALIBRATION_CameraLocationPV0")["Intrinsics"]["ModelParameters"]
    with KinectRecording(real_mkv) as rec:
        assert rec.calibration_json() == raw
        cal = rec.calibration()
    # 720P = the 4096×3072 sensor scaled to 1280 wide (×0.3125) and cropped to 720 rows.
    assert cal.K[0, 0] == pytest.approx(p[2] * 4096 * 0.3125)
    assert cal.K[1, 1] == pytest.approx(p[3] * 3072 * 0.3125)
    assert cal.K[0, 2] == pytest.approx(p[0] * 1280 - 0.5)
    assert cal.K[1, 2] == pytest.approx(p[1] * 960 - 120 - 0.5)
    assert cal.K[0, 0] == pytest.approx(cal.K[1, 1], rel=1e-3)  # square pixels: a sanity check of the crop
    assert cal.dist[:4].tolist() == pytest.approx([p[4], p[5], p[13], p[12]])


def test_reduced_resolution_decode(real_mkv):
    with KinectRecording(real_mkv) as rec:
        (_, _, full), = list(rec.frames())
        for scale in (2, 4, 8):
            (_, t, small), = list(rec.frames(scale=scale))
            assert small.shape == (720 // scale, 1280 // scale, 3)
            ref = full.reshape(720 // scale, scale, 1280 // scale, scale, 3).mean(axis=(1, 3))
            assert np.abs(ref - small).mean() < 4.0  # same picture, decoded in the IDCT at 1/scale
            assert t == pytest.approx(0.463945)


def test_sample_recording(sample_session):
    gt = json.loads((sample_session / "ground_truth/ground_truth.json").read_text())
    with KinectRecording(sample_session / "takes/take01/kinect.mkv") as rec:
        probe = rec.probe()
        assert (probe.width, probe.height, probe.frames) == (3840, 2160, 600)
        assert probe.fps == pytest.approx(30.0, abs=0.01)
        assert probe.duration_s == pytest.approx(20.0, abs=0.01)
        assert probe.start_offset_ns == gt["takes"]["take01"]["k4a_start_offset_ns"]
        np.testing.assert_allclose(rec.calibration().K, gt["camera"]["K"], atol=1e-6)
        frames = list(rec.frames(scale=8, start=3, stop=40, step=6))
        assert [i for i, _, _ in frames] == [3, 9, 15, 21, 27, 33, 39]
        assert [round(t * 30) for _, t, _ in frames] == [3, 9, 15, 21, 27, 33, 39]
        assert frames[0][2].shape == (270, 480, 3)


def test_colour_track_found_by_tag_not_index(sample_session, tmp_path):
    """A decoy video track first, the tagged COLOR track second."""
    src = sample_session / "takes/take01/kinect.mkv"
    out = tmp_path / "decoy.mkv"
    subprocess.run([
        ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=black:s=320x288:r=30:d=1", "-t", "1", "-i", str(src),
        "-map", "0:v", "-map", "1:v", "-c:v:0", "mjpeg", "-c:v:1", "copy", "-metadata:s:v:0", "title=DEPTH",
        "-metadata:s:v:1", "title=COLOR", "-metadata:s:v:1", "K4A_COLOR_TRACK=42", str(out),
    ], check=True)
    with KinectRecording(out) as rec:
        assert rec.color_stream.index == 1
        assert (rec.width, rec.height) == (3840, 2160)


def test_no_colour_track(tmp_path):
    out = tmp_path / "depth_only.mkv"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=black:s=64x64:r=30:d=1",
                    "-c:v", "mjpeg", "-metadata:s:v:0", "title=DEPTH", str(out)], check=True)
    with pytest.raises(InputError, match=r"depth_only\.mkv: no colour track"):
        KinectRecording(out)


def test_truncated_recording(sample_session, tmp_path):
    data = (sample_session / "takes/take01/kinect.mkv").read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mkv: file is truncated"):
        KinectRecording(cut)


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mkv"
    bad.write_text("this is not a video")
    with pytest.raises(InputError, match=r"notes\.mkv: not a Matroska file"):
        KinectRecording(bad)


def test_recording_without_frames(tmp_path):
    empty = tmp_path / "empty.mkv"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=black:s=64x64:r=30:d=1", "-frames:v", "0",
                    "-c:v", "mjpeg", "-metadata:s:v:0", "K4A_COLOR_TRACK=1", str(empty)], check=True)
    with pytest.raises(InputError, match=r"empty\.mkv: "):
        KinectRecording(empty).probe()
