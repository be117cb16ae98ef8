"""UniSinger's face renderer (SPEC §3): depth video + reference image → portrait video.

Generator: a U-Net whose encoder has 8 levels at 256², 128², …, 2² with 64, 128, 256, 512, 512,
512, 512, 512 channels, and a symmetric decoder (upsampling, skip concatenation, residual
blocks). Input channels: the FLAME depth image (1), the reference image (3) and a temporal
positional embedding (TPE: sin/cos of the frame index at 4 frequencies, 8 channels).
Discriminator: a 70×70 PatchGAN on (input, image) pairs, returning its intermediate features
for the feature-matching loss. Losses: LSGAN, L1 photometric, perceptual (VGG-19 features
from a user-provided state dict; without it the term is off and the run says so), feature
matching.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (64, 128, 256, 512, 512, 512, 512, 512)
TPE_FREQUENCIES = 4


def temporal_embedding(frames: torch.Tensor, size: int, period: float = 30.0) -> torch.Tensor:
    """(B,) frame indices → (B, 2·TPE_FREQUENCIES, size, size) constant-per-image channels."""
    freqs = 2 * math.pi / period * 2.0 ** torch.arange(TPE_FREQUENCIES, dtype=torch.float32, device=frames.device)
    angles = frames.float()[:, None] * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return emb[:, :, None, None].expand(-1, -1, size, size)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.InstanceNorm2d(ch), nn.ReLU(True),
                                  nn.Conv2d(ch, ch, 3, padding=1), nn.InstanceNorm2d(ch))

    def forward(self, x):
        return F.relu(x + self.body(x))


class UNetGenerator(nn.Module):
    def __init__(self, in_channels: int = 1 + 3 + 2 * TPE_FREQUENCIES, out_channels: int = 3,
                 channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        self.down = nn.ModuleList()
        prev = in_channels
        for i, ch in enumerate(channels):
            stride = 1 if i == 0 else 2  # level 1 keeps the input resolution
            norm = nn.InstanceNorm2d(ch) if 0 < i < len(channels) - 1 else nn.Identity()
            self.down.append(nn.Sequential(nn.Conv2d(prev, ch, 3 if stride == 1 else 4, stride, 1), norm,
                                           nn.LeakyReLU(0.2, True)))
            prev = ch
        self.up = nn.ModuleList()
        for ch in reversed(channels[:-1]):
            self.up.append(nn.ModuleDict({
                "upsample": nn.ConvTranspose2d(prev, ch, 4, 2, 1),
                "merge": nn.Sequential(nn.Conv2d(2 * ch, ch, 3, padding=1), nn.InstanceNorm2d(ch), nn.ReLU(True)),
                "res": ResBlock(ch),
            }))
            prev = ch
        self.out = nn.Conv2d(prev, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block["upsample"](x)
            x = block["res"](block["merge"](torch.cat([x, skip], 1)))
        return torch.tanh(self.out(x))


class PatchDiscriminator(nn.Module):
    """pix2pix's 70×70 PatchGAN; returns (patch logits, intermediate features)."""

    def __init__(self, in_channels: int = 1 + 3 + 3, ch: int = 64):
        super().__init__()
        specs = [(in_channels, ch, 2, False), (ch, 2 * ch, 2, True), (2 * ch, 4 * ch, 2, True),
                 (4 * ch, 8 * ch, 1, True)]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 4, s, 1), nn.InstanceNorm2d(o) if n else nn.Identity(),
                          nn.LeakyReLU(0.2, True))
            for i, o, s, n in specs)
        self.head = nn.Conv2d(8 * ch, 1, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.head(x), feats


class VGGPerceptual(nn.Module):
    """L1 between VGG-19 features (relu1_1 … relu5_1) of two images in [−1, 1]."""

    LAYERS = (1, 6, 11, 20, 29)

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models import vgg19

        net = vgg19(weights=None)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.features = net.features[: max(self.LAYERS) + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[:, None, None])
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[:, None, None])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x, y = ((a + 1) / 2 - self.mean) / self.std, ((b + 1) / 2 - self.mean) / self.std
        loss = a.new_zeros(())
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in self.LAYERS:
                loss = loss + F.l1_loss(x, y)
        return loss


@dataclass
class RendererWeights:
    gan: float = 1.0
    l1: float = 10.0
    perceptual: float = 10.0
    feature_matching: float = 10.0


def perceptual_loss(weights: str | Path | None) -> VGGPerceptual | None:
    if weights is None:
        warnings.warn("no VGG-19 weights given (SINGINGHEAD_VGG19_WEIGHTS): the perceptual loss is disabled",
                      stacklevel=2)
        return None
    return VGGPerceptual(weights)


def renderer_step(gen: UNetGenerator, disc: PatchDiscriminator, opt_g, opt_d, batch: dict, w: RendererWeights,
                  vgg: VGGPerceptual | None) -> dict[str, float]:
    """One GAN step: batch has `depth` (B, 1, S, S), `reference` (B, 3, S, S), `target` (B, 3, S, S)
    in [−1, 1] and `frame` (B,) indices."""
    size = batch["target"].shape[-1]
    cond = torch.cat([batch["depth"], batch["reference"], temporal_embedding(batch["frame"], size)], 1)
    fake = gen(cond)
    pair_real = torch.cat([batch["depth"], batch["reference"], batch["target"]], 1)
    pair_fake = torch.cat([batch["depth"], batch["reference"], fake], 1)
    opt_d.zero_grad(set_to_none=True)
    real_logits, _ = disc(pair_real)
    fake_logits, _ = disc(pair_fake.detach())
    loss_d = 0.5 * ((real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean())
    loss_d.backward()
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    fake_logits, fake_feats = disc(pair_fake)
    with torch.no_grad():
        _, real_feats = disc(pair_real)
    terms = {"gan": (fake_logits - 1).pow(2).mean(), "l1": F.l1_loss(fake, batch["target"]),
             "feature_matching": sum(F.l1_loss(f, r) for f, r in zip(fake_feats, real_feats, strict=True))}
    if vgg is not None:
        terms["perceptual"] = vgg(fake, batch["target"])
    loss_g = sum(getattr(w, k) * v for k, v in terms.items())
    loss_g.backward()
    opt_g.step()
    return {"d": float(loss_d.detach()), "g": float(loss_g.detach()),
            **{k: float(v.detach()) for k, v in terms.items()}}
