"""UniSinger's 3D module: a transformer CVAE over 59-d FLAME motion (SPEC §3), and a
FaceFormer-style deterministic baseline on the same encoders.

Encoder: motion (B, T, 59) → linear to d, plus the shape embedding (100 → d); learnable [μ] and
[σ] tokens prepended; periodic positional encoding (PPE); transformer decoder layers whose
cross-attention to the audio features uses the diagonal alignment mask (motion frame t attends
only to audio frame t; the [μ], [σ] tokens attend to all of it); outputs 0 and 1 are μ and
log σ². Decoder: the shape token and T copies of z, PPE, transformer decoder with the same
masked cross-attention, drop the first output, linear to 59: one forward pass for all T frames.
Sizes (the papers give none): d = 256, 4 heads, 2 layers, feed-forward 1024, PPE period 30.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from singinghead.schemas import motion as layout
from singinghead.trainer.models.audio import AudioEncoder


@dataclass
class ModelConfig:
    d_model: int = 256
    heads: int = 4
    layers: int = 2
    feedforward: int = 1024
    dropout: float = 0.1
    period: int = 30
    max_frames: int = 600


class PeriodicPositionalEncoding(nn.Module):
    """FaceFormer's PPE: sinusoidal encoding over one period, repeated along time."""

    def __init__(self, d_model: int, period: int, max_len: int, dropout: float = 0.1):
        super().__init__()
        pe = torch.zeros(period, d_model)
        position = torch.arange(period, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe.repeat(max_len // period + 1, 1)[None])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[:, : x.shape[1]])


def alignment_mask(queries: int, frames: int, prefix: int, device=None) -> torch.Tensor:
    """Boolean (queries, frames) cross-attention mask, True = blocked: query `prefix + t` sees only
    audio frame t; the `prefix` tokens before the frames see every audio frame."""
    mask = torch.ones(queries, frames, dtype=torch.bool, device=device)
    mask[:prefix] = False
    t = torch.arange(queries - prefix, device=device)
    mask[prefix + t, t.clamp(max=frames - 1)] = False
    return mask


def _decoder(cfg: ModelConfig) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.heads, cfg.feedforward, cfg.dropout, batch_first=True)
    return nn.TransformerDecoder(layer, cfg.layers)


class _MotionModel(nn.Module):
    """What both models share: audio encoder, shape and motion embeddings, PPE, one transformer
    decoder stack, and a zero-initialised output layer (training starts from the neutral motion)."""

    def __init__(self, wav2vec2_dir, cfg: ModelConfig | None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        d = cfg.d_model
        self.audio = AudioEncoder(wav2vec2_dir, d)
        self.shape_embed = nn.Linear(layout.SHAPE_DIM, d)
        self.motion_in = nn.Linear(layout.MOTION_DIM, d)
        self.ppe = PeriodicPositionalEncoding(d, cfg.period, cfg.max_frames + 2, cfg.dropout)
        self.decoder = _decoder(cfg)
        self.motion_out = nn.Linear(d, layout.MOTION_DIM)
        nn.init.zeros_(self.motion_out.weight)
        nn.init.zeros_(self.motion_out.bias)


class UniSingerVAE(_MotionModel):
    def __init__(self, wav2vec2_dir, cfg: ModelConfig | None = None):
        super().__init__(wav2vec2_dir, cfg)
        self.dist_tokens = nn.Parameter(torch.randn(2, self.cfg.d_model) * 0.02)  # [μ], [σ]
        self.encoder = _decoder(self.cfg)

    def encode(self, motion, shape, audio_feats) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = motion.shape
        tokens = torch.cat([self.dist_tokens.expand(b, -1, -1),
                            self.motion_in(motion) + self.shape_embed(shape)[:, None]], dim=1)
        out = self.encoder(self.ppe(tokens), audio_feats, memory_mask=alignment_mask(t + 2, t, 2, motion.device))
        return out[:, 0], out[:, 1]  # μ, log σ²

    def decode(self, z, shape, audio_feats) -> torch.Tensor:
        b, t, _ = audio_feats.shape
        tokens = torch.cat([self.shape_embed(shape)[:, None], z[:, None].expand(b, t, -1)], dim=1)
        out = self.decoder(self.ppe(tokens), audio_feats, memory_mask=alignment_mask(t + 1, t, 1, z.device))
        return self.motion_out(out[:, 1:])

    def forward(self, motion, shape, singing, bgm_mfcc) -> dict[str, torch.Tensor]:
        feats = self.audio(singing, bgm_mfcc)
        mu, logvar = self.encode(motion, shape, feats)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return {"motion": self.decode(z, shape, feats), "mu": mu, "logvar": logvar}

    @torch.no_grad()
    def generate(self, shape, singing, bgm_mfcc, z: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """(B, T, 59) motion for z ~ N(0, I) (or the given z): non-autoregressive, one pass."""
        feats = self.audio(singing, bgm_mfcc)
        if z is None:
            # drawn where the generator lives (a seeded CPU generator gives the same z on every device)
            z = torch.randn(feats.shape[0], self.cfg.d_model, generator=generator, device=generator.device,
                            dtype=feats.dtype).to(feats.device) if generator is not None \
                else torch.randn_like(feats[:, 0])
        return self.decode(z, shape, feats)


class FaceFormerStyle(_MotionModel):
    """Deterministic baseline (the papers' FaceFormer rows): the same audio and shape encoders, a
    causal transformer decoder over the previous frames' motion with the aligned audio, trained
    with teacher forcing and decoded autoregressively (T passes)."""

    def _step(self, previous: torch.Tensor, shape, feats) -> torch.Tensor:
        """Predictions for every position of `previous` (B, n, 59): frame i from frames < i."""
        n = previous.shape[1]
        tokens = torch.cat([self.shape_embed(shape)[:, None], self.motion_in(previous[:, :-1])], dim=1) \
            if n > 1 else self.shape_embed(shape)[:, None]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=feats.device), diagonal=1)
        out = self.decoder(self.ppe(tokens), feats, tgt_mask=causal,
                           memory_mask=alignment_mask(n, feats.shape[1], 0, feats.device))
        return self.motion_out(out)

    def forward(self, motion, shape, singing, bgm_mfcc) -> dict[str, torch.Tensor]:
        return {"motion": self._step(motion, shape, self.audio(singing, bgm_mfcc))}

    @torch.no_grad()
    def generate(self, shape, singing, bgm_mfcc, z=None, generator=None) -> torch.Tensor:
        feats = self.audio(singing, bgm_mfcc)
        b, t, _ = feats.shape
        motion = torch.zeros(b, 1, layout.MOTION_DIM, device=feats.device, dtype=feats.dtype)
        for i in range(t):
            pred = self._step(motion, shape, feats)[:, -1:]
            motion = torch.cat([motion[:, :i], pred, motion.new_zeros(b, 1, layout.MOTION_DIM)], dim=1)
        return motion[:, :t]


MODELS = {"unisinger": UniSingerVAE, "faceformer": FaceFormerStyle}
