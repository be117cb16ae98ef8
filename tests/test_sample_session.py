"""The sample session's ground truth agrees with its own media (by independent measurement)."""

import json

import numpy as np
import pytest
import soundfile as sf

from singinghead.capture_rigs.audio_files import read_audio
from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.samples.session import build_sample_session


@pytest.fixture(scope="module")
def gt(sample_session):
    return json.loads((sample_session / "ground_truth/ground_truth.json").read_text())


def _frames(sample_session, take):
    return np.load(sample_session / f"ground_truth/{take}_frames.npz")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return ix * iy / (union - ix * iy)


def test_song_is_the_sum_of_its_stems(sample_session):
    for take in ("take01", "take02"):
        song, sr = sf.read(sample_session / f"songs/{take}.flac")
        vocals, _ = sf.read(sample_session / f"ground_truth/{take}_song_vocals.wav")
        accomp, _ = sf.read(sample_session / f"ground_truth/{take}_song_accompaniment.wav")
        assert sr == 44100 and song.shape == vocals.shape == accomp.shape
        assert np.abs(song - (vocals + accomp)).max() < 1e-5  # 24-bit quantisation only
        assert np.std(vocals) > 0.02 and np.std(accomp) > 0.02


def _envelope_at_frames(mic, sr, video_to_mic, n):
    hop = sr // 100
    rms = np.sqrt(np.convolve(mic ** 2, np.ones(hop) / hop, mode="same"))
    t = np.arange(n) / 30 + video_to_mic
    return np.interp(t, np.arange(len(mic)) / sr, rms)


def test_mouth_follows_the_dry_vocal_at_the_true_offset(sample_session, gt):
    """Mouth opening (video) vs the mic's loudness: aligned at the true offset, not at the logged one."""
    for take, info in gt["takes"].items():
        mic, sr = read_audio(sample_session / f"takes/{take}/mic.wav", mono=True)
        mouth = _frames(sample_session, take)["mouth_opening"]
        lags = np.arange(-15, 16)
        scores = [np.corrcoef(_envelope_at_frames(mic, sr, info["log_offsets_s"]["video_to_mic"] + lag / 30,
                                                  len(mouth)) > 0.01, mouth > 0.05)[0, 1] for lag in lags]
        best = lags[int(np.argmax(scores))] / 30
        truth = info["offsets_s"]["video_to_mic"] - info["log_offsets_s"]["video_to_mic"]
        assert best == pytest.approx(truth, abs=1.5 / 30), take
        assert max(scores) > 0.8
    assert gt["takes"]["take02"]["offsets_s"]["video_to_mic"] != gt["takes"]["take02"]["log_offsets_s"]["video_to_mic"]


def test_dry_vocal_is_the_song_melody_at_the_true_song_offset(sample_session, gt):
    for take, info in gt["takes"].items():
        mic, sr = read_audio(sample_session / f"takes/{take}/mic.wav", sample_rate=16000, mono=True)
        voc, _ = read_audio(sample_session / f"ground_truth/{take}_song_vocals.wav", sample_rate=16000, mono=True)
        env = lambda x: np.sqrt(np.convolve(x ** 2, np.ones(160) / 160, "same"))[::160]  # noqa: E731
        a, b = env(mic), env(voc)
        lags = np.arange(0, 400)
        scores = [np.corrcoef(a, b[lag:lag + len(a)])[0, 1] if lag + len(a) <= len(b) else -1 for lag in lags]
        assert lags[int(np.argmax(scores))] / 100 == pytest.approx(info["offsets_s"]["mic_to_song"], abs=0.03)


def test_landmarks_and_boxes_follow_the_head_motion(sample_session, gt):
    for take, info in gt["takes"].items():
        f = _frames(sample_session, take)
        n = info["frames"]
        assert f["landmarks"].shape == (n, 68, 2) and f["face_box"].shape == (n, 4)
        centre = f["landmarks"][:, 27:36].mean(1)  # nose: follows the head, not the jaw
        assert np.abs(np.diff(centre, axis=0)).max() < 60  # smooth between frames
        for when in info["cuts_s"]:  # each lean moves the face by more than its own width
            before, after = int((when - 0.1) * 30), int((when + 0.7) * 30)
            width = f["face_box"][before, 2] - f["face_box"][before, 0]
            assert abs(centre[after, 0] - centre[before, 0]) > width
        jaw_drop = f["landmarks"][:, 8, 1] - f["landmarks"][:, 33, 1]  # chin below nose tip
        assert np.corrcoef(jaw_drop, f["mouth_opening"])[0, 1] > 0.9


def test_detector_finds_the_face_where_ground_truth_says(sample_session):
    """MTCNN on decoded 4K frames agrees with the ground-truth face box."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    f = _frames(sample_session, "take02")
    with KinectRecording(sample_session / "takes/take02/kinect.mkv") as rec:
        for i, _, img in rec.frames(scale=4, step=150):
            boxes, probs = mtcnn.detect(img)
            assert boxes is not None and len(boxes) == 1, i
            box = boxes[0] * 4
            gt_box = f["face_box"][i]
            assert _iou(box, gt_box) > 0.5, i


def test_a_720p_session_gives_its_truth_in_its_own_pixels(short_session):
    """A session recorded in the Kinect's 720p mode: MTCNN on its decoded frames finds the face
    where the ground truth puts it, box and centre, in the 1280×720 track's pixels."""
    from facenet_pytorch import MTCNN

    gt = json.loads((short_session / "ground_truth/ground_truth.json").read_text())
    assert (gt["video"]["width"], gt["video"]["height"]) == (1280, 720)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    f = _frames(short_session, "take01")
    rows = np.flatnonzero(f["recorded"])  # the recording's k-th frame is the k-th recorded one
    with KinectRecording(short_session / "takes/take01/kinect.mkv") as rec:
        for i, _, img in rec.frames(step=30):
            boxes, _ = mtcnn.detect(img)
            assert boxes is not None and len(boxes) == 1, i
            box, gt_box, centre = boxes[0], f["face_box"][rows[i]], f["centre_xy"][rows[i]]
            assert _iou(box, gt_box) > 0.5, i
            width = box[2] - box[0]
            assert np.linalg.norm((box[:2] + box[2:]) / 2 - centre) < 0.25 * width, (i, box, centre)


def test_same_seed_same_session(tmp_path):
    """The same seed gives the same files. Determinism does not depend on the resolution: the
    takes are recorded in 720p to save time. The second build leaves out the light stage, and the
    first renders one of its 51 photos: that photo is rendered again from the head its ground
    truth names, with the same calibration."""
    from singinghead.flame.ict import write_model
    from singinghead.flame.model import load_flame
    from singinghead.samples.light_stage import write_light_stage

    a = build_sample_session(tmp_path / "a", seed=3, duration_s=1.0, color_mode="720P",
                             light_stage_photos={"cam17.jpg"})
    b = build_sample_session(tmp_path / "b", seed=3, duration_s=1.0, light_stage=False, color_mode="720P")
    c = build_sample_session(tmp_path / "c", seed=4, duration_s=1.0, light_stage=False, n_takes=1, color_mode="720P")
    for name in ("takes/take01/mic.wav", "songs/take02.flac", "takes/take01/kinect.mkv", "takes/take02/kinect.mkv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "takes/take01/mic.wav").read_bytes() != (c / "takes/take01/mic.wav").read_bytes()

    shape = json.loads((a / "ground_truth/ground_truth.json").read_text())["light_stage"]["shape"]
    model = load_flame(write_model(tmp_path / "flame"))
    (tmp_path / "again").mkdir()
    write_light_stage(tmp_path / "again/light_stage", model, np.asarray(shape), tmp_path / "again",
                      photos={"cam17.jpg"})
    assert [p.name for p in (tmp_path / "again/light_stage/photos").iterdir()] == ["cam17.jpg"]
    for name in ("light_stage/photos/cam17.jpg", "light_stage/calibration.json"):
        assert (a / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
