import numpy as np

from singinghead.tasks.sequence_filters import boxplot_outliers, replace_outliers, smooth_landmarks


def test_injected_outliers_are_found_and_replaced():
    rng = np.random.default_rng(0)
    t = np.arange(300) / 30
    clean = np.stack([np.sin(t), np.cos(0.5 * t), 0.3 * np.sin(2 * t)], axis=1)
    noisy = clean + rng.normal(0, 0.01, clean.shape)
    bad = [17, 120, 121, 250]
    noisy[bad] += rng.normal(0, 3.0, (len(bad), 3))
    mask = boxplot_outliers(noisy, scale=1.5)
    assert set(np.flatnonzero(mask)) >= set(bad)
    assert mask.sum() <= len(bad) + 3  # few false alarms on the clean frames
    fixed = replace_outliers(noisy, mask)
    assert np.abs(fixed[bad] - clean[bad]).max() < 0.1
    np.testing.assert_array_equal(fixed[~mask], noisy[~mask])


def test_smoothing_reduces_jitter_and_keeps_the_motion():
    rng = np.random.default_rng(1)
    t = np.arange(120) / 30
    truth = np.stack([100 + 40 * np.sin(2 * np.pi * 0.5 * t), 200 + 20 * np.cos(2 * np.pi * 0.3 * t)], axis=1)
    truth = np.repeat(truth[:, None, :], 68, axis=1)
    detected = truth + rng.normal(0, 2.0, truth.shape)
    smoothed = smooth_landmarks(detected)
    jitter = lambda x: np.abs(np.diff(x, 2, axis=0)).mean()  # noqa: E731
    assert jitter(smoothed) < 0.5 * jitter(detected)
    assert np.abs(smoothed - truth).mean() < np.abs(detected - truth).mean()
