"""Audio features per video frame, shared by the release builder and the trainer.

- UniSinger: 64-d MFCC of the BGM, one vector per 30 fps video frame.
- MusicFace: 13 MFCC + 13 Δ = 26-d at 100 Hz (25 ms window, 10 ms hop, 16 kHz); for each video
  frame the 39 feature frames (390 ms) centred on it.
Both are librosa; inputs are 16 kHz mono float arrays cut to the segment.
"""

from __future__ import annotations

import numpy as np

SR = 16_000


def bgm_mfcc_per_frame(bgm: np.ndarray, n_frames: int, fps: float = 30.0, n_mfcc: int = 64) -> np.ndarray:
    """(n_frames, 64): MFCC with one analysis window centred on each video frame."""
    import librosa

    hop = int(round(SR / fps))  # 533 samples ≈ one video frame
    mfcc = librosa.feature.mfcc(y=bgm.astype(np.float32), sr=SR, n_mfcc=n_mfcc, n_fft=2048, hop_length=hop,
                                n_mels=128, center=True)
    return _fit_frames(mfcc.T, n_frames).astype(np.float32)


def mfcc26(audio: np.ndarray) -> np.ndarray:
    """(T100, 26): 13 MFCC + 13 Δ at 100 Hz (window 400, hop 160 at 16 kHz), as MusicFace and MS-Sync."""
    import librosa

    mfcc = librosa.feature.mfcc(y=audio.astype(np.float32), sr=SR, n_mfcc=13, n_fft=512, win_length=400,
                                hop_length=160, center=True)
    return np.concatenate([mfcc, librosa.feature.delta(mfcc, width=3)], axis=0).T.astype(np.float32)


def musicface_mfcc_windows(audio: np.ndarray, n_frames: int, fps: float = 30.0, window: int = 39) -> np.ndarray:
    """(n_frames, 39, 26): MFCC+Δ at 100 Hz (25 ms window, 10 ms hop), 39 frames per video frame."""
    feats = mfcc26(audio)
    centres = np.round(np.arange(n_frames) / fps * 100).astype(int)
    half = window // 2
    padded = np.pad(feats, ((half, half + 1), (0, 0)), mode="edge")
    idx = centres[:, None] + np.arange(window)[None, :]
    return padded[np.clip(idx, 0, len(padded) - 1)].astype(np.float32)


def _fit_frames(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    return np.pad(x, ((0, n - len(x)), (0, 0)), mode="edge")
