"""Beat Align score (BA, Bailando/AIST++ style) between audio and head motion.

Audio beats: onsets of the percussive part's onset strength (librosa HPSS + onset detection on a
10 ms hop, so an onset is placed within ~5 ms before rounding to a 30 fps frame; librosa's default
32 ms hop alone moves beats by a frame). Motion beats: local minima of the Gaussian-smoothed
(σ = 5 frames) speed of the 6-d head pose, the speed taken at each frame (central difference),
so a head that stops at frame k has its beat at k, not half a frame later. BA = mean over audio
beats of exp(−d² / (2·9)), d = distance in frames to the nearest motion beat. NaN when the audio
has no beat; 0 when the motion has none.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from singinghead.schemas import motion as layout

SIGMA2 = 9.0


def audio_beats(y: np.ndarray, sr: int = 16_000, fps: float = layout.FPS) -> np.ndarray:
    import librosa

    hop = sr // 100
    percussive = librosa.effects.percussive(np.asarray(y, dtype=np.float32))
    env = librosa.onset.onset_strength(y=percussive, sr=sr, hop_length=hop, n_fft=4 * hop)
    # at least 0.13 s between onsets: one beat is one onset
    times = librosa.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=hop, units="time", wait=13)
    return np.unique(np.round(times * fps).astype(int))


def motion_beats(motion: torch.Tensor | np.ndarray, sigma: float = 5.0) -> np.ndarray:
    pose = np.asarray(motion)[..., layout.HEAD_POSE]
    speed = gaussian_filter1d(np.linalg.norm(np.gradient(pose, axis=0), axis=-1), sigma)
    return find_peaks(-speed)[0]  # plateaus count once (their middle)


def beat_align(motion_beat_frames: np.ndarray, audio_beat_frames: np.ndarray) -> float:
    if len(audio_beat_frames) == 0:
        return float("nan")
    if len(motion_beat_frames) == 0:
        return 0.0
    d = np.abs(np.asarray(audio_beat_frames)[:, None] - np.asarray(motion_beat_frames)[None]).min(axis=1)
    return float(np.mean(np.exp(-(d.astype(float) ** 2) / (2 * SIGMA2))))
