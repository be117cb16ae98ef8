"""2D metrics of rendered portraits (journal Table IV, MusicFace): SSIM, CPBD, mouth/face landmark
distance, beat alignment on landmarks, and the Fréchet distance behind FID.

- SSIM: scikit-image's `structural_similarity` on RGB frames (channel axis, data range 255).
- CPBD (Narvekar & Karam 2011, no reference): Canny edges of the grey image; in 64×64 blocks
  with > 0.2 % edge pixels, each vertical-edge pixel's width (distance between the intensity
  extrema on both sides along the row); just-noticeable-blur width 5 (block contrast ≤ 50) or
  3; P(blur) = 1 − exp(−(w / w_JNB)^3.6); CPBD = share of edges with P(blur) ≤ 0.63.
- M-LMD / F-LMD: mean L2 distance (pixels) between generated and ground-truth dlib landmarks,
  over the 20 mouth points (48–67) or all 68, averaged over frames.
- BA on landmarks: motion beats = local minima of the smoothed mean landmark speed.
- FID: `frechet_distance` of two Gaussians fitted to Inception-v3 pool features fed as the
  standard FID feeds them (299², [−1, 1]); the network is a user-provided torchvision state dict.
  Tested equal to torchmetrics' `FrechetInceptionDistance` given the same network.
- LPIPS (AlexNet): from user-provided AlexNet and LPIPS linear-layer weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks
from skimage.metrics import structural_similarity

from singinghead.schemas.settings import channels_last

BETA = 3.6
P_JNB = 0.63
MOUTH = slice(48, 68)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def cpbd(image: np.ndarray, block: int = 64) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    grey = grey.astype(np.float64)
    edges = cv2.Canny(grey.astype(np.uint8), 100, 200) > 0
    sobel_x = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)
    sobel_y = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)
    vertical = edges & (np.abs(sobel_x) >= np.abs(sobel_y))  # edges crossed by a row
    probs = []
    h, w = grey.shape
    for r0 in range(0, h - block + 1, block):
        for c0 in range(0, w - block + 1, block):
            blk = edges[r0:r0 + block, c0:c0 + block]
            if blk.mean() <= 0.002:
                continue
            patch = grey[r0:r0 + block, c0:c0 + block]
            w_jnb = 5.0 if patch.max() - patch.min() <= 50 else 3.0
            for r, c in zip(*np.nonzero(vertical[r0:r0 + block, c0:c0 + block]), strict=True):
                width = _edge_width(grey[r0 + r], c0 + c, np.sign(sobel_x[r0 + r, c0 + c]))
                probs.append(1.0 - np.exp(-((width / w_jnb) ** BETA)))
    if not probs:
        return float("nan")
    return float(np.mean(np.asarray(probs) <= P_JNB))


def _edge_width(row: np.ndarray, c: int, direction: float) -> float:
    """Distance between the local intensity extrema on both sides of an edge at column c."""
    left = c
    while left > 0 and (row[left - 1] - row[left]) * direction < 0:
        left -= 1
    right = c
    while right < len(row) - 1 and (row[right + 1] - row[right]) * direction > 0:
        right += 1
    return float(max(right - left, 1))


def lmd(pred: np.ndarray, target: np.ndarray, mouth_only: bool = False) -> float:
    """(T, 68, 2) landmarks → mean L2 distance (px) over frames and the chosen points."""
    sel = MOUTH if mouth_only else slice(None)
    d = np.linalg.norm(np.asarray(pred)[:, sel] - np.asarray(target)[:, sel], axis=-1)
    d = d[np.isfinite(d)]  # frames where either side has no face do not count
    return float(d.mean()) if len(d) else float("nan")


def landmark_beats(landmarks: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """As the 3D motion beats (speed at each frame by central difference), over the landmarks' mean speed."""
    speed = np.linalg.norm(np.gradient(np.asarray(landmarks, dtype=float), axis=0), axis=-1).mean(axis=-1)
    return find_peaks(-gaussian_filter1d(speed, sigma))[0]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½).

    tr((Σ1 Σ2)^½) is taken from symmetric eigenproblems: with S = Σ1^½, Σ1 Σ2 = S (S Σ2) and
    S Σ2 S share their non-zero eigenvalues, and S Σ2 S is symmetric PSD. Exact, and on 2048-d
    features several times faster than scipy's general sqrtm (a complex Schur form), which is
    also ill-conditioned on the rank-deficient covariances of a few hundred frames."""
    w, v = np.linalg.eigh(np.asarray(sigma1, dtype=np.float64))
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ np.asarray(sigma2, dtype=np.float64) @ root1)
    trace_covmean = np.sqrt(np.clip(inner, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


class InceptionFeatures(torch.nn.Module):
    """FID's feature extractor: torchvision's Inception-v3 (from a user-provided state dict) up to
    its 2048-d pool, fed as the standard FID feeds it: uint8 RGB (N, 3, H, W) resized to 299²
    bilinearly and scaled to [−1, 1] — what the ported FID weights expect (`transform_input`
    off; not ImageNet's mean/std). A torch module, so torchmetrics' FID can use the same network."""

    num_features = 2048

    def __init__(self, weights: str | Path):
        from torchvision.models import inception_v3

        super().__init__()
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.fc = torch.nn.Identity()
        self.net = channels_last(net.eval())  # its 3×3 max-pools: see channels_last

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x / 127.5 - 1.0)


def inception_features(frames: np.ndarray, weights: str | Path | None, batch: int = 32) -> np.ndarray | None:
    """(N, 2048) FID features of (N, H, W, 3) uint8 frames; None (with a warning) when no weights
    are provided: FID is then not reported."""
    if weights is None:
        warnings.warn("no Inception-v3 weights given: FID disabled", stacklevel=2)
        return None
    net = InceptionFeatures(weights)
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2)
    return np.concatenate([net(x[i:i + batch]).double().numpy() for i in range(0, len(x), batch)])


class LPIPS:
    """LPIPS (Zhang et al. 2018, AlexNet variant) from user-provided weights: torchvision's
    AlexNet state dict and the LPIPS linear-layer state dict (`alex.pth` of the lpips release,
    keys `lin{k}.model.1.weight`). Distance = Σ_layers mean_spatial ‖w ⊙ (f̂_x − f̂_y)‖², with f̂
    the channel-normalised features of relu1 … relu5."""

    LAYERS = (1, 4, 7, 9, 11)  # relu outputs in torchvision's alexnet.features
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self, alexnet_weights: str | Path, lpips_weights: str | Path):
        import torch
        from torchvision.models import alexnet

        net = alexnet(weights=None)
        net.load_state_dict(torch.load(alexnet_weights, map_location="cpu", weights_only=True))
        self.features = net.features[: max(self.LAYERS) + 1].eval()
        lin = torch.load(lpips_weights, map_location="cpu", weights_only=True)
        self.weights = [lin[f"lin{k}.model.1.weight"].reshape(1, c, 1, 1) for k, c in enumerate(self.CHANNELS)]
        self.shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
        self.scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 pairs → (N,) distances."""
        import torch

        def prep(x):
            t = torch.as_tensor(np.asarray(x), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
            return (t - self.shift) / self.scale

        x, y = prep(a), prep(b)
        total = torch.zeros(len(x))
        k = 0
        with torch.no_grad():
            for i, layer in enumerate(self.features):
                x, y = layer(x), layer(y)
                if i in self.LAYERS:
                    nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    total += (self.weights[k] * (nx - ny).pow(2)).sum(1).mean((1, 2))
                    k += 1
        return total.numpy()


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID from two (N, D) feature sets (unbiased covariances, as torchmetrics and pytorch-fid)."""
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
