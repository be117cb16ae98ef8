import numpy as np

from singinghead.tasks.sequence_filters import boxplot_outliers, replace_outliers, smooth_landmarks


def test_injected_outliers_are_found_and_replaced():
    rng = np.random.default_rng(0)
    t = np.arange(300) / 30
    clean = np.stack([np.sin(t), np.cos(0.5 * t), 0.3 * np.sin(2 * t)], axis=1)
    noisy = clean + rng.normal(0, 0.01, clean.shape)
    bad = [17, 120, 121, 250]
    noisy[bad] += rng.normal(0, 3.0, (len(bad), 3))
    mask = boxplot_outliers(noisy)
    assert set(np.flatnonzero(mask)) >= set(bad)
    assert mask.sum() <= len(bad) + 6  # false alarms: at most 2 % of the clean frames (noise tails) …
    fixed = replace_outliers(noisy, mask)
    assert np.abs(fixed[bad] - clean[bad]).max() < 0.1
    assert np.abs(fixed[mask] - clean[mask]).max() < 0.05  # … and replacing those costs nothing (noise 0.01)
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


def _mouth_sequence(rng):
    """Jaw opening (rad) of a singer: closed, wide open for a held note, closed, open again —
    smooth 4-frame transitions, small per-frame fitting noise."""
    levels = np.concatenate([np.zeros(30), np.full(40, 0.35), np.zeros(25), np.full(45, 0.3), np.zeros(20)])
    jaw = np.convolve(np.pad(levels, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    return np.stack([jaw, np.zeros_like(jaw), np.zeros_like(jaw)], 1) + rng.normal(0, 0.004, (len(jaw), 3))


def test_open_close_open_mouth_keeps_every_frame():
    jaw = _mouth_sequence(np.random.default_rng(2))
    assert not boxplot_outliers(jaw).any()


def test_spikes_and_a_three_frame_tracking_failure_are_caught():
    rng = np.random.default_rng(3)
    jaw = _mouth_sequence(rng)
    clean = jaw.copy()
    spikes = [12, 55, 150]  # single frames that jump (closed, open, closed)
    jaw[spikes, 0] += np.array([0.25, -0.25, 0.3])
    failure = [100, 101, 102]  # a lost face: the fit jumps for three frames
    jaw[failure] += np.array([0.2, 0.15, -0.1])
    mask = boxplot_outliers(jaw)
    assert set(np.flatnonzero(mask)) >= set(spikes + failure)
    assert mask.sum() <= len(spikes) + len(failure) + 4
    fixed = replace_outliers(jaw, mask)
    assert np.abs(fixed[spikes + failure] - clean[spikes + failure]).max() < 0.05
