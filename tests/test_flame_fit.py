"""FLAME tracking on a synthetic sequence of the procedural model with known parameters."""

import numpy as np
import pytest
import torch

from singinghead.flame.camera import portrait_camera, project, to_camera
from singinghead.flame.ict import write_model
from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.samples.motion import known_sequence
from singinghead.schemas import motion as layout
from singinghead.tasks.flame_fit import (
    batch_groups,
    concat_fits,
    fit_frames,
    fit_sequence,
    replace_frame_outliers,
    split_fit,
)


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    return FlameLayer(load_flame(write_model(tmp_path_factory.mktemp("flame"))))


def test_portrait_camera_maps_source_pixels():
    K = np.array([[1800.0, 0, 1919.5], [0, 1800.0, 1079.5], [0, 0, 1]])
    Kp = portrait_camera(K, (1400, 400, 1000), 1024)
    src = np.array([1400.0 + 250, 400.0 + 600])  # a source pixel inside the crop
    ray = np.linalg.solve(K, [*src, 1.0])
    uv = (Kp @ ray)[:2] / (Kp @ ray)[2]
    np.testing.assert_allclose(uv, (src - [1400, 400] + 0.5) * 1.024 - 0.5, atol=1e-9)


def _reproject(layer, shape, motion, translation, K):
    m = torch.as_tensor(motion, dtype=torch.float32)
    with torch.no_grad():
        lmk = layer.landmarks(torch.as_tensor(shape, dtype=torch.float32)[None].expand(len(m), -1), m[:, :50],
                              m[:, 50:53], m[:, 53:56], m[:, 56:59])
        return project(to_camera(lmk, torch.as_tensor(translation, dtype=torch.float32)),
                       torch.as_tensor(K, dtype=torch.float32)).numpy()


def test_tracking_recovers_a_known_sequence(layer):
    truth = known_sequence(layer, frames=90)
    frames, _ = replace_frame_outliers(fit_frames(layer, truth.observed, truth.K))
    shape = frames.shape.mean(0)
    seq = fit_sequence(layer, truth.observed, truth.K, shape, frames)
    fitted = _reproject(layer, shape, seq.motion, seq.translation, truth.K)
    rmse = np.sqrt(((fitted - truth.clean) ** 2).sum(-1).mean())
    assert rmse < 1.0, rmse  # px at 1024², against the noise-free landmarks (noise: 0.5 px per axis)
    assert np.abs(seq.motion[:, layout.JAW.start] - truth.motion[:, layout.JAW.start]).mean() < 0.02  # rad (≈ 1°)
    head = seq.motion[:, layout.GLOBAL_ORIENT] + seq.motion[:, layout.NECK]
    assert np.abs(head - truth.motion[:, layout.GLOBAL_ORIENT]).mean() < 0.01
    # global vs neck: a convention (landmarks see only their composition). The regulariser's minimum
    # is the even split; the ICT head's neck joint sits at the skull base, 17 cm above the root, so
    # the translation's smoothness term also has a say: the split is about even (the head turns by
    # up to 0.2 rad here; all of it in one joint would be 0.1–0.2 rad off).
    split = np.abs(seq.motion[:, layout.GLOBAL_ORIENT] - seq.motion[:, layout.NECK])
    assert split.mean() < 0.04, split.mean(0)
    # Where the head is: the 3D landmarks in camera space (the translation alone depends on the split).
    def head_points(motion, translation):
        m = torch.as_tensor(motion, dtype=torch.float32)
        s = torch.as_tensor(truth.shape if motion is truth.motion else shape, dtype=torch.float32)
        with torch.no_grad():
            lmk = layer.landmarks(s[None].expand(len(m), -1), m[:, :50], m[:, 50:53], m[:, 53:56], m[:, 56:59])
        return to_camera(lmk, torch.as_tensor(translation, dtype=torch.float32)).numpy()
    depth_error = np.abs(head_points(seq.motion, seq.translation) - head_points(truth.motion, truth.translation))
    assert depth_error[..., :2].max() < 0.003 and depth_error[..., 2].mean() < 0.01  # metres: x, y; depth at 0.6 m
    # Expression: 50 coefficients seen through 68 points in one view. Its time-varying effect on the
    # landmarks in the image plane is recovered (correlation > 0.85, relative error < 0.5); its
    # static part is indistinguishable from shape.
    zero = torch.zeros(len(seq.motion), 3)
    true_shape = torch.as_tensor(truth.shape, dtype=torch.float32)[None].expand(len(seq.motion), -1)

    def expression_effect(expression):
        e = torch.as_tensor(expression, dtype=torch.float32)
        with torch.no_grad():
            d = layer.landmarks(true_shape, e, zero, zero, zero) - layer.landmarks(true_shape, 0 * e, zero, zero, zero)
        d = d[..., :2].numpy()
        return (d - d.mean(0)).reshape(-1)

    ours, real = expression_effect(seq.motion[:, layout.EXPRESSION]), expression_effect(truth.motion[:, :50])
    assert np.corrcoef(ours, real)[0, 1] > 0.85
    assert np.linalg.norm(ours - real) < 0.5 * np.linalg.norm(real)
    per_frame = np.concatenate([frames.expression, frames.global_orient, frames.jaw], 1)
    smoothed = np.concatenate([seq.motion[:, :50], head, seq.motion[:, 56:]], 1)
    assert np.abs(np.diff(smoothed, 2, axis=0)).mean() < 0.5 * np.abs(np.diff(per_frame, 2, axis=0)).mean()
    assert seq.motion.shape == (90, 59)
    assert np.isfinite(seq.error_px).all() and np.median(seq.error_px) < 1.5


def test_frames_without_landmarks_are_bridged(layer):
    truth = known_sequence(layer, frames=60, seed=1)
    observed = truth.observed.copy()
    observed[20:26] = np.nan  # the detector lost the face for 6 frames
    frames = fit_frames(layer, observed, truth.K)
    assert np.isnan(frames.error_px[20:26]).all() and np.isfinite(frames.error_px[:20]).all()
    frames, flags = replace_frame_outliers(frames)
    assert all(f[20:26].all() for f in flags.values())
    seq = fit_sequence(layer, observed, truth.K, frames.shape[~flags["shape"]].mean(0), frames)
    assert np.isfinite(seq.motion).all()
    # the gap is filled by the temporal smoothness: jaw within a few hundredths of a radian of the truth
    assert np.abs(seq.motion[20:26, 56] - truth.motion[20:26, 56]).max() < 0.05


def test_full_mesh_path_gives_the_same_fit(layer):
    truth = known_sequence(layer, frames=20, seed=2)
    frames = fit_frames(layer, truth.observed, truth.K, steps=50)
    a = fit_sequence(layer, truth.observed, truth.K, frames.shape.mean(0), frames, steps=20)
    b = fit_sequence(layer, truth.observed, truth.K, frames.shape.mean(0), frames, steps=20, full_mesh=True)
    np.testing.assert_allclose(a.motion, b.motion, atol=1e-3)


def test_a_wild_detection_is_a_boxplot_outlier_and_is_replaced(layer):
    truth = known_sequence(layer, frames=60, seed=3)
    observed = truth.observed.copy()
    observed[30] += [80.0, -40.0]  # the detector jumped to a wrong place for one frame
    frames = fit_frames(layer, observed, truth.K)
    cleaned, flags = replace_frame_outliers(frames)
    assert flags["translation"][30] and flags["translation"].sum() <= 3
    # the wild frame jumped by centimetres; cleaned, it continues its neighbours' path (the per-frame
    # translation itself depends on the global/neck split, so it is compared with the fits around it)
    assert np.linalg.norm(frames.translation[30] - frames.translation[29]) > 0.01
    good = np.flatnonzero(~flags["translation"])
    before, after = good[good < 30].max(), good[good > 30].min()
    bridged = 0.5 * (frames.translation[before] + frames.translation[after])
    assert np.linalg.norm(cleaned.translation[30] - bridged) < 0.002
    # the syllable-rate jaw is motion, not error: nothing but the wild frame is replaced
    assert set(np.flatnonzero(flags["jaw"] | flags["expression"])) <= {30}


def test_a_takes_segments_fitted_in_one_batch_get_what_each_gets_alone(layer):
    """The take's segments are fitted in one batch, each frame with its own segment's camera and no
    smoothness across segments: what each segment gets is what it gets fitted alone (the frames
    and sequence fits' steps are per parameter), to float rounding."""
    truth = known_sequence(layer, frames=90)
    a, b = slice(0, 50), slice(50, 90)
    # The second segment seen through another portrait crop: pixels scaled by 0.8 and shifted.
    K_b = truth.K.copy()
    K_b[:2] *= 0.8
    K_b[:2, 2] += [40.0, -25.0]
    observed_b = truth.observed[b] * 0.8 + [40.0, -25.0]
    alone = [fit_frames(layer, truth.observed[a], truth.K, steps=100), fit_frames(layer, observed_b, K_b, steps=100)]
    K = np.concatenate([np.repeat(truth.K[None], 50, 0), np.repeat(K_b[None], 40, 0)])
    together = split_fit(fit_frames(layer, np.concatenate([truth.observed[a], observed_b]), K, steps=100), [50, 40])
    for one, both in zip(alone, together, strict=True):
        for name, value in vars(one).items():
            np.testing.assert_allclose(getattr(both, name), value, atol=1e-4, err_msg=name)

    shape = np.concatenate([f.shape for f in alone]).mean(0)
    seq_alone = [fit_sequence(layer, truth.observed[a], truth.K, shape, alone[0], steps=100),
                 fit_sequence(layer, observed_b, K_b, shape, alone[1], steps=100)]
    seq_together = split_fit(fit_sequence(layer, np.concatenate([truth.observed[a], observed_b]), K, shape,
                                          concat_fits(alone), steps=100, lengths=[50, 40]), [50, 40])
    for one, both in zip(seq_alone, seq_together, strict=True):
        for name, value in vars(one).items():
            np.testing.assert_allclose(getattr(both, name), value, atol=1e-4, err_msg=name)
    # Smoothing across the boundary would have pulled the first frames of the second segment.
    joined = fit_sequence(layer, np.concatenate([truth.observed[a], observed_b]), K, shape, concat_fits(alone),
                          steps=100)
    assert np.abs(joined.motion[50:53] - seq_alone[1].motion[:3]).max() > 1e-3
    # A long take is fitted in batches of at most FIT_BATCH_FRAMES (a fit holds ≈ 24 KB a frame);
    # a segment longer than that is fitted alone, as it was before batching.
    assert batch_groups([50, 40, 9000, 10, 8990, 5], limit=9000) == [[0, 1], [2], [3, 4], [5]]
