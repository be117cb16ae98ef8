"""2D metrics on constructed images and Gaussians with known answers."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from singinghead.trainer.metrics import image


@pytest.fixture(scope="module")
def photo():
    return cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)


def test_ssim_identity_and_degradation(photo):
    assert image.ssim(photo, photo) == pytest.approx(1.0)
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 25, photo.shape), 0, 255).astype(np.uint8)
    assert image.ssim(photo, noisy) < 0.6


def test_cpbd_drops_with_blur():
    photo = skimage.data.astronaut()
    scores = [image.cpbd(photo if s == 0 else cv2.GaussianBlur(photo, (0, 0), s)) for s in (0, 0.6, 1.0, 1.5)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 5 * scores[2]
    step = np.zeros((128, 128), np.uint8)
    step[:, 64:] = 200  # an ideal vertical edge: width 1, certainly sharp
    assert image.cpbd(step) == pytest.approx(1.0)


def test_landmark_distances():
    target = np.zeros((2, 68, 2))
    pred = target.copy()
    pred[:, 48:68, 0] = 3.0  # every mouth point 3 px off
    assert image.lmd(pred, target, mouth_only=True) == pytest.approx(3.0)
    assert image.lmd(pred, target) == pytest.approx(3.0 * 20 / 68)


def test_frechet_distance_of_known_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 4.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)  # ‖Δμ‖² + Σ (σ1 + σ2 − 2√(σ1σ2))
    assert image.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert image.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (4000, 3)), rng.normal(0.5, 1, (4000, 3))
    assert image.fid(a, b) == pytest.approx(3 * 0.25, abs=0.08)
    # Covariances that do not commute, one of them singular: against scipy's general sqrtm.
    from scipy.linalg import sqrtm

    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 4))
    s1, s2 = x @ x.T, y @ y.T
    expected = 3 * 4.0 + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert image.frechet_distance(mu1.repeat(3), s1, mu2.repeat(3), s2) == pytest.approx(expected, rel=1e-6)


def test_fid_is_disabled_without_a_backbone():
    with pytest.warns(UserWarning, match="FID disabled"):
        assert image.inception_features(np.zeros((1, 8, 8, 3), np.uint8), None) is None


def _fid_ours_and_torchmetrics(tmp: Path) -> tuple[float, float]:
    """Our features and FID, and torchmetrics' FrechetInceptionDistance with the same network (a
    randomly initialised Inception-v3 saved in torchvision's format), on real photos: the
    astronaut and coffee images, cropped and shifted, as "real" and "fake" sets."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    weights = tmp / "inception_v3.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), weights)
    rng = np.random.default_rng(0)

    def crops(photo: np.ndarray, n: int) -> np.ndarray:
        ys, xs = rng.integers(0, photo.shape[0] - 256, n), rng.integers(0, photo.shape[1] - 256, n)
        return np.stack([photo[y:y + 256, x:x + 256] for y, x in zip(ys, xs, strict=True)])

    real, fake = crops(skimage.data.astronaut(), 24), crops(skimage.data.coffee(), 24)
    ours = image.fid(image.inception_features(real, weights), image.inception_features(fake, weights))
    metric = FrechetInceptionDistance(feature=image.InceptionFeatures(weights))
    metric.update(torch.as_tensor(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.as_tensor(fake).permute(0, 3, 1, 2), real=False)
    return ours, float(metric.compute())


def background_builds(tmp_path_factory) -> dict:
    """Both FIDs (a minute of Inception on the CPU), computed in the background while the tests
    before this module run (conftest.prebuilt)."""
    return {"fid": [(_fid_ours_and_torchmetrics, (tmp_path_factory.mktemp("fid"),))]}


def test_fid_equals_torchmetrics_given_the_same_inception(prebuilt):
    ours, theirs = prebuilt["fid"][0].result()
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert ours > 0


def test_lpips_loads_user_weights_and_measures_distance(tmp_path):
    import torch
    from torchvision.models import alexnet

    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(image.LPIPS.CHANNELS)}
    torch.save(lin, tmp_path / "alex.pth")
    metric = image.LPIPS(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    x = skimage.data.astronaut()[None, :128, :128]
    blurred = cv2.GaussianBlur(x[0], (0, 0), 2)[None]
    noisy = np.clip(x + np.random.default_rng(0).normal(0, 60, x.shape), 0, 255).astype(np.uint8)
    d_same, d_blur, d_noise = metric(x, x)[0], metric(x, blurred)[0], metric(x, noisy)[0]
    assert d_same == pytest.approx(0.0, abs=1e-6) and d_blur > 0 and d_noise > 0
