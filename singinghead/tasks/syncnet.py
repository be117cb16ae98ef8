"""SyncNet: the learned audio–visual syncer MusicFace aligned its clips with (Chung & Zisserman,
"Out of time", ACCV 2016 workshops; the `syncnet_v2.model` release of joonson/syncnet_python).

The network is the release's, layer for layer, so the authors' weights load by name. Weights are
a user file (setting `SINGINGHEAD_SYNCNET_WEIGHTS`; nothing downloads), loaded as tensors only
(`weights_only=True`). Inputs follow the release's pipeline:

- video: 25 fps, the face cropped as `run_pipeline.py` does (box centre and size median-filtered
  over 13 frames, crop scale 0.4, grey padding 110), 224×224, BGR 0–255, five frames per window;
  the box comes from our dense 68 landmarks instead of S3FD (their bounds, grown by a quarter of
  the face's height upwards to the forehead a face detector includes);
- audio: `python_speech_features.mfcc` (13 coefficients at 100 Hz) of 16 kHz mono at int16 scale,
  20 MFCC frames (0.2 s) per window.

Offset: for every candidate video→mic lag (10 ms steps, ±0.6 s = SyncNet's ±15 frames at 25 fps
around the capture log's value) the mean distance between each video window's embedding and the
embedding of the audio that starts at the window's time + lag; the offset is the minimum (refined
by a parabola through its neighbours) and the confidence SyncNet's own: median − minimum of that
curve. `audio_sync.MIN_SYNCNET_CONFIDENCE` makes it `measured`, as long as the minimum is not on the search border.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from scipy import signal
from torch import nn

from singinghead.schemas.errors import AssetError
from singinghead.schemas.settings import channels_last, torch_device
from singinghead.tasks.audio_sync import OffsetEstimate

FPS = 25  # SyncNet's video rate
MFCC_RATE = 100  # python_speech_features' default hop: 10 ms
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
SIZE = 224
CROP_SCALE = 0.4
SEARCH_S = 0.6


def _bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """The syncnet_v2 network (module names as in the release's `SyncNetModel.S`)."""

    def __init__(self, embedding: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)), nn.MaxPool2d(1, 1),
            *_bn_relu(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)), nn.MaxPool2d(3, (1, 2)),
            *_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)), nn.MaxPool2d(3, 2),
            *_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netcnnlip = nn.Sequential(
            *_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), nn.BatchNorm3d(96)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows → (N, embedding)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def lips(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR 0–255 face crops → (N, embedding)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def weights_id(path: str | Path) -> dict:
    """What identifies the syncer in the audio step's cache key: the weight file's SHA-256."""
    return {"method": "syncnet", "weights_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def load_syncnet(path: str | Path, device: str = "auto") -> SyncNet:
    """The network with the release's weights (a state dict of tensors, read with weights_only)."""
    path = Path(path)
    where = f"SINGINGHEAD_SYNCNET_WEIGHTS={path}"
    if not path.is_file():
        raise AssetError(f"{where}: no such file (put the SyncNet release's syncnet_v2.model there)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise AssetError(f"{where}: not a SyncNet state dict of tensors (refused to unpickle anything else): "
                         f"{str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetError(f"{where}: expected a state dict of tensors, got {type(state).__name__}")
    model = SyncNet()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise AssetError(f"{where}: not the syncnet_v2 layout (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"wrong shapes {wrong[:3]})")
    model.load_state_dict(state)
    device = torch_device(None if device == "auto" else device)  # auto: SINGINGHEAD_DEVICE
    return channels_last(model.eval().to(device))  # its 3×3 max-pools: see channels_last


def mfcc(voice: np.ndarray, sr: int) -> np.ndarray:
    """(13, n) MFCCs at 100 Hz of mono audio, as the release computes them (int16-scaled 16 kHz)."""
    import librosa
    import python_speech_features

    x16 = librosa.resample(voice.astype(np.float32), orig_sr=sr, target_sr=16000) if sr != 16000 else voice
    return python_speech_features.mfcc(np.asarray(x16, np.float64) * 32768.0, 16000).T.astype(np.float32)


def face_boxes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 3) box centre x, y and half-size per frame from 68 landmarks, median-filtered over 13
    frames as the release smooths its detections; NaN where the frame has no face."""
    x0, y0 = landmarks[..., 0].min(axis=1), landmarks[..., 1].min(axis=1)
    x1, y1 = landmarks[..., 0].max(axis=1), landmarks[..., 1].max(axis=1)
    y0 = y0 - 0.25 * (y1 - y0)  # a face detector's box takes in the forehead
    boxes = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, np.maximum(x1 - x0, y1 - y0) / 2], axis=1)
    ok = np.isfinite(boxes).all(axis=1)
    if ok.sum() >= 13:
        boxes[ok] = signal.medfilt(boxes[ok], kernel_size=(13, 1))
    return boxes


def face_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """224² face crop of an RGB frame as the release's `crop_video` makes it (returned BGR)."""
    cx, cy, bs = box
    pad = int(bs * (1 + 2 * CROP_SCALE))
    padded = cv2.copyMakeBorder(frame[..., ::-1], pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
    my, mx = cy + pad, cx + pad
    face = padded[int(my - bs):int(my + bs * (1 + 2 * CROP_SCALE)),
                  int(mx - bs * (1 + CROP_SCALE)):int(mx + bs * (1 + CROP_SCALE))]
    return cv2.resize(face, (SIZE, SIZE))


def video_windows(video: str, times: np.ndarray, landmarks: np.ndarray) -> Iterator[tuple[float, np.ndarray]]:
    """(start time, (5, 224, 224, 3) BGR crops) of every 5-frame window at 25 fps with a face in all
    five frames; each 25 fps frame is the source frame nearest its time. Streams the video."""
    boxes = face_boxes(landmarks)
    grid = np.arange(times[0], times[-1] + 1e-9, 1.0 / FPS)
    source = np.abs(times[None, :] - grid[:, None]).argmin(axis=1)
    crops: dict[int, np.ndarray] = {}
    k = 0
    with av.open(video) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i >= len(times):
                break
            while k < len(grid) and source[k] == i:
                if np.isfinite(boxes[i]).all():
                    crops[k] = face_crop(frame.to_ndarray(format="rgb24"), boxes[i])
                start = k - WINDOW_FRAMES + 1
                if start >= 0 and all(j in crops for j in range(start, k + 1)):
                    yield float(grid[start]), np.stack([crops[j] for j in range(start, k + 1)])
                crops.pop(start, None)
                k += 1


@torch.no_grad()
def embed_video(model: SyncNet, windows: Iterator[tuple[float, np.ndarray]], batch: int = 16
                ) -> tuple[np.ndarray, np.ndarray]:
    """Start times (W,) and lip embeddings (W, D) of the windows, in batches (bounded memory)."""
    device = next(model.parameters()).device
    times, feats, buf = [], [], []

    def flush():
        x = torch.from_numpy(np.stack(buf)).to(device).float().permute(0, 4, 1, 2, 3)  # N, 3, 5, H, W
        feats.append(model.lips(x).cpu().numpy())
        buf.clear()

    for t, crops in windows:
        times.append(t)
        buf.append(crops)
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    return np.asarray(times), (np.concatenate(feats) if feats else np.zeros((0, 1)))


@torch.no_grad()
def embed_audio(model: SyncNet, coeffs: np.ndarray, first: int, last: int, batch: int = 256) -> np.ndarray:
    """Audio embeddings of the 20-frame MFCC windows starting at MFCC frames first … last − 1."""
    device = next(model.parameters()).device
    out = []
    for a in range(first, last, batch):
        starts = np.arange(a, min(a + batch, last))
        x = np.stack([coeffs[:, s:s + WINDOW_MFCC] for s in starts])[:, None]
        out.append(model.audio(torch.from_numpy(x).to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1))


def distance_curve(video_times: np.ndarray, video_feats: np.ndarray, audio_feats: np.ndarray, audio_first: int,
                   lags: np.ndarray) -> np.ndarray:
    """Mean distance, per lag (s), between each video window and the audio window starting at its
    time + lag (audio windows every 10 ms from MFCC frame `audio_first`); NaN where none fit."""
    curve = np.full(len(lags), np.nan)
    for j, lag in enumerate(lags):
        idx = np.round((video_times + lag) * MFCC_RATE).astype(int) - audio_first
        ok = (idx >= 0) & (idx < len(audio_feats))
        if ok.sum() >= 1:
            curve[j] = float(np.linalg.norm(video_feats[ok] - audio_feats[idx[ok]], axis=1).mean())
    return curve


def offset_from_curve(lags: np.ndarray, curve: np.ndarray) -> tuple[float, float, float, bool]:
    """(offset s, confidence = median − min, min distance, minimum on the search border)."""
    ok = np.isfinite(curve)
    if ok.sum() < 3:
        return float("nan"), 0.0, float("nan"), True
    k = int(np.nanargmin(curve))
    delta = 0.0
    if 0 < k < len(curve) - 1 and ok[k - 1] and ok[k + 1]:
        denom = curve[k - 1] - 2 * curve[k] + curve[k + 1]
        delta = 0.5 * (curve[k - 1] - curve[k + 1]) / denom if denom > 0 else 0.0
    step = lags[1] - lags[0] if len(lags) > 1 else 0.0
    at_edge = min(k, len(curve) - 1 - k) < 2
    return float(lags[k] + delta * step), float(np.nanmedian(curve) - curve[k]), float(curve[k]), at_edge


def syncnet_video_offset(model: SyncNet, segments: list[tuple[str, np.ndarray, np.ndarray]], voice: np.ndarray,
                         sr: int, log_offset_s: float, search_s: float = SEARCH_S) -> OffsetEstimate:
    """Mic time of video time 0 from SyncNet, pooled over a take's segments.

    `segments`: per portrait segment, (video file, video time of each frame in s, its 68 landmarks).
    """
    coeffs = mfcc(voice, sr)
    lags = np.round(np.arange(-search_s, search_s + 1e-9, 1.0 / MFCC_RATE) + log_offset_s, 6)
    total = np.zeros(len(lags))
    weight = np.zeros(len(lags))
    n_windows = 0
    for video, times, landmarks in segments:
        t_win, v_feat = embed_video(model, video_windows(video, times, landmarks))
        if len(t_win) == 0:
            continue
        first = max(0, int(np.floor((t_win.min() + lags[0]) * MFCC_RATE)))
        last = min(coeffs.shape[1] - WINDOW_MFCC + 1, int(np.ceil((t_win.max() + lags[-1]) * MFCC_RATE)) + 1)
        if last <= first:
            continue
        a_feat = embed_audio(model, coeffs, first, last)
        curve = distance_curve(t_win, v_feat, a_feat, first, lags)
        ok = np.isfinite(curve)
        total[ok] += curve[ok] * len(t_win)
        weight[ok] += len(t_win)
        n_windows += len(t_win)
    curve = np.where(weight > 0, total / np.maximum(weight, 1), np.nan)
    offset, conf, min_dist, at_edge = offset_from_curve(lags, curve)
    return OffsetEstimate(offset, float("nan"), float("nan"), at_edge=at_edge, method="syncnet", confidence=conf,
                          min_distance=min_dist, windows=n_windows)
