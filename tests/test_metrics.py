"""The 3D metrics against values computed by hand on tiny tensors."""

import math

import numpy as np
import pytest
import torch

from singinghead.trainer.metrics import beat, motion


def test_lve_is_the_mean_over_frames_of_the_worst_lip_vertex():
    target = torch.zeros(2, 3, 3)  # T=2 frames, 3 lip vertices
    pred = torch.zeros(2, 2, 3, 3)  # n=2 samples
    pred[0, 0, 1] = torch.tensor([0.003, 0.004, 0.0])  # 5 mm at frame 0
    pred[0, 1, 2] = torch.tensor([0.0, 0.0, 0.001])  # 1 mm at frame 1
    pred[1, :, 0] = torch.tensor([0.002, 0.0, 0.0])  # 2 mm in both frames
    np.testing.assert_allclose(motion.lve(pred, target).numpy(), [3.0, 2.0], rtol=1e-6)
    assert motion.mean_and_min(motion.lve(pred, target)) == pytest.approx((2.5, 2.0))


def test_fve_is_the_mean_vertex_error():
    target = torch.zeros(1, 4, 3)
    pred = torch.zeros(1, 1, 4, 3)
    pred[0, 0, 0, 0] = 0.004
    assert float(motion.fve(pred, target)[0]) == pytest.approx(1.0)  # 4 mm over 4 vertices


def test_fdd_compares_the_temporal_spread_of_upper_face_displacement():
    neutral = torch.zeros(1, 3)
    target = torch.tensor([[[0.0, 0, 0]], [[0.002, 0, 0]]])  # displacement 0, 2 mm → std 1 mm
    pred = torch.tensor([[[[0.001, 0, 0]], [[0.001, 0, 0]]]])  # constant → std 0
    assert float(motion.fdd(pred, target, neutral)[0]) == pytest.approx(1.0)


def test_ppe_uses_global_and_neck_only():
    target = torch.zeros(2, 59)
    pred = torch.zeros(1, 2, 59)
    pred[0, :, 50] = 0.3  # global
    pred[0, :, 54] = 0.4  # neck
    pred[0, :, 56] = 9.0  # jaw: not head pose
    pred[0, :, :50] = 9.0  # expression: not head pose
    assert float(motion.ppe(pred, target)[0]) == pytest.approx(0.5)


def test_diversity_and_apd_average_over_ordered_pairs():
    lmk = torch.zeros(3, 1, 68, 3)
    lmk[1, 0, 0, 0] = 0.001  # 1 mm away from sample 0
    lmk[2, 0, 0, 0] = 0.002
    # pairs: (0,1)=1, (0,2)=4, (1,2)=1 mm², each twice, over n(n−1)=6
    assert float(motion.diversity(lmk)) == pytest.approx(2.0)
    assert float(motion.diversity(lmk[:1])) == 0.0
    samples = torch.zeros(3, 2, 59)
    samples[1, :, 0] = 1.0
    samples[2, :, 0] = 2.0
    assert float(motion.apd(samples)) == pytest.approx(2.0)


def test_min_and_mean_distance_over_samples():
    target = torch.zeros(2, 59)
    samples = torch.zeros(3, 2, 59)
    samples[0, 0, 0] = 2.0  # frame 0: 4, frame 1: 0 → 2
    samples[1, :, 1] = 1.0  # 1
    samples[2, :, 2] = 3.0  # 9
    mind, meand = motion.min_mean_dist(samples, target)
    assert (float(mind), float(meand)) == pytest.approx((1.0, 4.0))


def test_beat_align_by_hand():
    assert beat.beat_align(np.array([10, 30]), np.array([10, 33])) == pytest.approx((1 + math.exp(-9 / 18)) / 2)
    assert beat.beat_align(np.array([]), np.array([5])) == 0.0
    assert math.isnan(beat.beat_align(np.array([5]), np.array([])))


def test_motion_beats_are_minima_of_head_speed():
    t = np.arange(240)
    motion_ = np.zeros((240, 59))
    motion_[:, 50] = np.sin(2 * np.pi * t / 60)  # speed minima at the extremes: 15, 45, …
    found = beat.motion_beats(motion_)
    assert all(min(abs(f - e) for e in range(15, 240, 30)) <= 1 for f in found) and len(found) >= 6


def test_audio_beats_find_clicks():
    sr = 16000
    y = np.zeros(sr * 4, dtype=np.float32)
    for s in np.arange(0.5, 4, 0.5):  # a click every 0.5 s
        y[int(s * sr): int(s * sr) + 200] = np.random.default_rng(0).normal(0, 0.5, 200)
    found = beat.audio_beats(y, sr)
    expected = np.arange(15, 120, 15)
    assert len(found) == len(expected)
    assert np.abs(found - expected).max() <= 2
