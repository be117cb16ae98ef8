"""MusicFace's eye and head metrics on constructed signals with known blinks and closures."""

import numpy as np
import pytest

from singinghead.trainer.metrics import eyes


def test_blinks_and_long_closures_are_separated_at_half_a_second():
    fps = 30
    signal = np.full(300, 0.1)
    signal[30:36] = 0.9  # 0.2 s blink
    signal[90:99] = 0.8  # 0.3 s blink
    signal[150:180] = 0.95  # 1.0 s long closure
    signal[240:254] = 0.9  # 14 frames = 0.47 s: still a blink
    found = eyes.closures(signal, fps)
    assert [(c.start, c.end, c.kind) for c in found] == [(30, 36, "blink"), (90, 99, "blink"), (150, 180, "long"),
                                                          (240, 254, "blink")]
    stats = eyes.blink_stats(signal, fps)
    assert stats["blinks_per_s"] == pytest.approx(3 / 10)
    assert stats["blink_duration_s"] == pytest.approx((6 + 9 + 14) / 3 / 30)
    assert stats["long_closures"] == 1


def test_normalisation_is_per_video_and_jitter_is_no_blink():
    low = np.full(100, 0.30)
    low[40:45] = 0.62  # a subject whose eyes never close fully still blinks after min-max normalisation
    assert [c.kind for c in eyes.closures(low)] == ["blink"]
    jitter = 0.1 + 0.05 * np.random.default_rng(0).random(300)  # open eyes, landmark noise only
    assert eyes.closures(jitter) == [] and eyes.blink_stats(jitter)["blinks_per_s"] == 0


def test_canonical_correlation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    assert eyes.canonical_correlation(x, x @ np.array([[2.0, 0.5], [0.1, -1.0]])) == pytest.approx(1.0, abs=1e-6)
    assert abs(eyes.canonical_correlation(x, rng.normal(size=(200, 2)))) < 0.3


def test_roughness_of_constant_and_parabolic_rotation():
    t = np.arange(60) / 30
    still = np.zeros((60, 59))
    assert eyes.roughness(still) == pytest.approx(0.0, abs=1e-9)
    turning = np.zeros((60, 59))
    turning[:, 52] = np.radians(10.0) * t**2  # 10·t² degrees about z: R'' = 20 deg/s²
    assert eyes.roughness(turning) == pytest.approx(400.0, rel=1e-3)
    assert eyes.head_speed(turning).shape == (59, 6)


def _face_with_eyes(openness: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks whose eye contours (dlib 36–47) open by `openness` (0 closed … 1)."""
    t = len(openness)
    lmk = np.zeros((t, 68, 2))
    for start, cx in ((36, -1.0), (42, 1.0)):
        corners = np.array([[cx - 0.3, 0.0], [cx - 0.1, 0.1], [cx + 0.1, 0.1], [cx + 0.3, 0.0], [cx + 0.1, -0.1],
                            [cx - 0.1, -0.1]])
        lmk[:, start:start + 6] = corners
        lmk[:, [start + 1, start + 2], 1] = 0.1 * openness[:, None] + 0.005
        lmk[:, [start + 4, start + 5], 1] = -0.1 * openness[:, None] - 0.005
    return lmk


def test_generated_eye_state_against_the_truth_per_sequence():
    """evaluate's eye metrics on eyelid points with known blinks: a sequence of two 8 s windows
    (joined in order, normalised once) with 4 blinks of 0.2 s; generated = truth gives CCA 1 and
    equal rates; generated eyes that never close give no blinks."""
    from singinghead.trainer.evaluate import eye_metrics

    openness = np.ones(480)
    for start in (30, 150, 300, 420):  # 4 blinks of 6 frames
        openness[start:start + 6] = 0.0
    truth = _face_with_eyes(openness)
    same = {"seq": [("seq_w001", np.stack([truth[240:], truth[240:]])), ("seq_w000", np.stack([truth[:240],
                                                                                                truth[:240]]))]}
    row = eye_metrics(same)
    assert row["CCA eye state"] == pytest.approx(1.0, abs=1e-6)
    assert row["Blinks/s"] == row["Blinks/s GT"] == pytest.approx(4 / 16)
    assert row["Blink s"] == row["Blink s GT"] == pytest.approx(0.2)
    never = {"seq": [("seq_w000", np.stack([truth[:240], _face_with_eyes(np.ones(240))]))]}
    row = eye_metrics(never)
    assert row["Blinks/s"] == 0 and row["Blinks/s GT"] == pytest.approx(2 / 8)
