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
