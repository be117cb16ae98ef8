"""The singing-audio encoder: wav2vec 2.0 (transformers) from a local folder, aligned to 30 fps.

wav2vec 2.0 gives one feature per 320 samples (50 Hz at 16 kHz); motion is 30 fps. The features
are resampled to the T motion frames by linear interpolation over time (`align_corners=True`,
as FaceFormer does for its frame rates), so frame t sees the audio around t / 30 s.
`write_random_wav2vec2` saves randomly initialised models with `save_pretrained` (tiny for tests
and the demo, `base` for speed measurements), so the real loading code always runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from singinghead.schemas.errors import AssetError
from singinghead.schemas.settings import get_settings

PRESETS = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
    "base": {},  # transformers' defaults are wav2vec2-base's architecture
}


def write_random_wav2vec2(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    Wav2Vec2Model(Wav2Vec2Config(**PRESETS[preset])).save_pretrained(folder)
    return folder


def wav2vec2_folder(fallback: str | Path | None = None) -> Path:
    """SINGINGHEAD_WAV2VEC2_DIR, else a tiny random stand-in written once at `fallback`."""
    configured = get_settings().wav2vec2_dir
    if configured:
        if not (Path(configured) / "config.json").is_file():
            raise AssetError(f"SINGINGHEAD_WAV2VEC2_DIR={configured}: no config.json (a transformers "
                             "Wav2Vec2 checkpoint folder is expected)")
        return Path(configured)
    if fallback is None:
        raise AssetError("no wav2vec 2.0 checkpoint: set SINGINGHEAD_WAV2VEC2_DIR (nothing is downloaded)")
    return write_random_wav2vec2(fallback)


class AudioEncoder(nn.Module):
    """Singing (16 kHz) → wav2vec 2.0 → linear to d; BGM MFCC (64 per frame) → linear to d/2;
    concatenated → linear to d (SPEC §3). Output (B, T, d) at the motion frame rate."""

    def __init__(self, wav2vec2_dir: str | Path, d_model: int, freeze_feature_encoder: bool = True):
        super().__init__()
        from transformers import Wav2Vec2Model
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.wav2vec2 = Wav2Vec2Model.from_pretrained(str(wav2vec2_dir))
        if freeze_feature_encoder:
            self.wav2vec2.freeze_feature_encoder()
        self.singing_proj = nn.Linear(self.wav2vec2.config.hidden_size, d_model)
        self.bgm_proj = nn.Linear(64, d_model // 2)
        self.fuse = nn.Linear(d_model + d_model // 2, d_model)

    def forward(self, singing: torch.Tensor, bgm_mfcc: torch.Tensor) -> torch.Tensor:
        frames = bgm_mfcc.shape[1]
        feats = self.wav2vec2(singing).last_hidden_state  # (B, ~50 Hz, H)
        feats = F.interpolate(feats.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)
        return self.fuse(torch.cat([self.singing_proj(feats), self.bgm_proj(bgm_mfcc)], dim=-1))
