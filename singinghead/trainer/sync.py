"""MS-Sync's syncer pyramid in the landmark domain (SPEC §5), and the dataset sync check.

Each level pairs a landmark clip with an audio clip of the same duration: 200, 400, 800 and
1600 ms, obtained by ×2 average pooling of the level below, so every level's syncer sees 6
landmark steps and 20 MFCC steps. Landmarks: the 68 points of each frame, minus the window's
mean face, over the mean inter-ocular distance (head and lip dynamics both count). Audio: 26-d
MFCC (13 + Δ; window 400, hop 160 at 16 kHz → 100 Hz), standardised per window. Two 1-D conv
encoders map the clips to unit vectors; training is InfoNCE with 48 negatives: batches of 49
random clips, each anchor's negatives being the other clips' audio (other windows, or the same
window at other times), temperature 0.07.

Offset and confidence per scale follow SyncNet: for every clip position of a window, the
distance (1 − cosine) to the audio clip shifted by δ landmark steps, averaged over positions;
the best δ is the minimum, the confidence is median − minimum. A positive offset means the
video lags the audio. `sync_check` trains on one split (or loads a pyramid trained elsewhere) and
flags held-out windows whose finest-scale offset is not 0 ± 1 frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from singinghead.features.audio import mfcc26
from singinghead.schemas import release as R
from singinghead.schemas.settings import torch_device
from singinghead.storage import files
from singinghead.trainer.data import ReleaseWindows

SCALES_MS = (200, 400, 800, 1600)
VIDEO_STEPS, AUDIO_STEPS = 6, 20  # a 200 ms clip at 30 fps / 100 Hz; the same counts at every level
NEGATIVES = 48
AUDIO_PER_FRAME = 100 / 30


def landmark_features(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) portrait landmarks → (T, 136) normalised dynamics (missing frames filled)."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    ok = np.isfinite(lmk).all(axis=(1, 2))
    if not ok.any():
        return np.zeros((len(lmk), 136), np.float32)
    t = np.arange(len(lmk))
    flat = lmk.reshape(len(lmk), -1)
    flat = np.stack([np.interp(t, t[ok], flat[ok, d]) for d in range(flat.shape[1])], axis=1)
    pts = flat.reshape(-1, 68, 2)
    iod = np.linalg.norm(pts[:, 36:42].mean(1) - pts[:, 42:48].mean(1), axis=-1).mean()
    return ((pts - pts.mean(0)) / max(iod, 1e-6)).reshape(len(pts), -1).astype(np.float32)


def audio_features(singing: np.ndarray) -> np.ndarray:
    feats = mfcc26(np.asarray(singing, dtype=np.float32))
    return ((feats - feats.mean(0)) / (feats.std(0) + 1e-6)).astype(np.float32)


def pool(x: torch.Tensor, level: int) -> torch.Tensor:
    """(…, T, C) averaged over 2^level steps."""
    if level == 0:
        return x
    k = 2**level
    return F.avg_pool1d(x.transpose(-1, -2), k, k).transpose(-1, -2)


class Syncer(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        def encoder(channels: int, kernel: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(channels, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                                 nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                                 nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(hidden, dim))

        self.video = encoder(136, 3)
        self.audio = encoder(26, 5)

    def embed_video(self, clips: torch.Tensor) -> torch.Tensor:  # (B, 6, 136)
        return F.normalize(self.video(clips.transpose(1, 2)), dim=-1)

    def embed_audio(self, clips: torch.Tensor) -> torch.Tensor:  # (B, 20, 26)
        return F.normalize(self.audio(clips.transpose(1, 2)), dim=-1)


def _audio_start(video_pos: torch.Tensor) -> torch.Tensor:
    return torch.round(video_pos.float() * AUDIO_PER_FRAME).long()


def _clips(seq: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """seq (N, T, C), starts (B,) flat indices into N·T via (window, start) → (B, length, C)."""
    idx = starts[:, 1:2] + torch.arange(length, device=starts.device)[None]
    return seq[starts[:, :1].expand_as(idx), idx]


@dataclass
class Pyramid:
    syncers: list[Syncer]

    def state_dict(self) -> dict:
        return {f"level{i}": {k: v.cpu() for k, v in s.state_dict().items()} for i, s in enumerate(self.syncers)}


def _level_data(windows: list[dict], level: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.stack([torch.as_tensor(w["video"]) for w in windows])
    a = torch.stack([torch.as_tensor(w["audio"][: 800]) for w in windows])
    return pool(v, level), pool(a, level)


def train_pyramid(windows: list[dict], steps: int = 300, batch: int = NEGATIVES + 1, seed: int = 0, lr: float = 1e-3
                  ) -> Pyramid:
    """Train one syncer per scale on windows with `video` (240, 136) and `audio` (≥ 800, 26) features."""
    g = torch.Generator().manual_seed(seed)  # draws on the CPU: the same batches on every device
    device = torch_device()
    syncers = []
    for level in range(len(SCALES_MS)):
        torch.manual_seed(seed + level)
        syncer = Syncer().to(device)
        opt = torch.optim.Adam(syncer.parameters(), lr)
        v, a = (x.to(device) for x in _level_data(windows, level))
        n, tv, ta = v.shape[0], v.shape[1], a.shape[1]
        max_v = min(tv - VIDEO_STEPS, int((ta - AUDIO_STEPS) / AUDIO_PER_FRAME))
        for _ in range(steps):
            # in-batch InfoNCE: each anchor's negatives are the other 48 anchors' audio clips
            # (other windows, or the same window at another time)
            win = torch.randint(0, n, (batch,), generator=g).to(device)
            pos = torch.randint(0, max_v + 1, (batch,), generator=g).to(device)
            video_emb = syncer.embed_video(_clips(v, torch.stack([win, pos], 1), VIDEO_STEPS))
            audio_emb = syncer.embed_audio(_clips(a, torch.stack([win, _audio_start(pos)], 1), AUDIO_STEPS))
            logits = video_emb @ audio_emb.T / 0.07
            loss = F.cross_entropy(logits, torch.arange(batch, device=device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        syncers.append(syncer.eval())
    return Pyramid(syncers)


@torch.no_grad()
def offsets(pyramid: Pyramid, video: np.ndarray, audio: np.ndarray, max_offset_frames: int = 15) -> list[dict]:
    """Per scale: best offset (video frames, positive = video lags audio), confidence, distances."""
    out = []
    for level, syncer in enumerate(pyramid.syncers):
        on = next(syncer.parameters()).device
        v = pool(torch.as_tensor(video, device=on)[None], level)[0]
        a = pool(torch.as_tensor(audio[:800], device=on)[None], level)[0]
        step_frames = 2**level
        d_max = max(1, max_offset_frames // step_frames)
        deltas = range(-d_max, d_max + 1)
        max_v = min(len(v) - VIDEO_STEPS, int((len(a) - AUDIO_STEPS) / AUDIO_PER_FRAME))
        positions = torch.arange(d_max, max_v - d_max + 1, device=on)
        if len(positions) == 0:
            out.append({"scale_ms": SCALES_MS[level], "offset_frames": None, "confidence": 0.0})
            continue
        vid = syncer.embed_video(torch.stack([v[p:p + VIDEO_STEPS] for p in positions]))
        dist = []
        for delta in deltas:
            starts = _audio_start(positions + delta)
            aud = syncer.embed_audio(torch.stack([a[s:s + AUDIO_STEPS] for s in starts]))
            dist.append(float((1 - (vid * aud).sum(-1)).mean()))
        dist = np.asarray(dist)
        best = int(np.argmin(dist))
        out.append({"scale_ms": SCALES_MS[level], "offset_frames": -list(deltas)[best] * step_frames,
                    "confidence": float(np.median(dist) - dist[best]), "distances": dist.round(4).tolist()})
    return out


def release_features(release: str, split: str) -> list[dict]:
    ds = ReleaseWindows(release, split, fields=("landmarks",), audio=("singing",))
    return [{"window_id": w["window_id"], "video": landmark_features(w["landmarks"].numpy()),
             "audio": audio_features(w["singing"].numpy())} for w in ds]


def check_windows(pyramid: Pyramid, windows: dict[str, list[dict]], tolerance_frames: int = 1) -> dict:
    """Offsets per scale of every window; flagged when the finest scale is not 0 ± tolerance."""
    results = []
    for split, items in windows.items():
        for w in items:
            per_scale = offsets(pyramid, w["video"], w["audio"])
            finest = per_scale[0]["offset_frames"]
            results.append({"window_id": w["window_id"], "split": split, "scales": per_scale,
                            "flagged": finest is None or abs(finest) > tolerance_frames})
    return {"tolerance_frames": tolerance_frames, "windows": results,
            "flagged": [r["window_id"] for r in results if r["flagged"]]}


def save_pyramid(pyramid: Pyramid, path: str) -> None:
    with files.atomic_output(path) as tmp:
        torch.save(pyramid.state_dict(), tmp)


def load_pyramid(path: str) -> Pyramid:
    """A pyramid saved by `save_pyramid` (tensors only: read with weights_only)."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a syncer pyramid of tensors (refused to unpickle it)") from exc
    syncers = []
    for i in range(len(SCALES_MS)):
        if f"level{i}" not in state:
            raise ValueError(f"{path}: not a syncer pyramid (no level{i})")
        syncer = Syncer()
        syncer.load_state_dict(state[f"level{i}"])
        syncers.append(syncer.to(torch_device()).eval())
    return Pyramid(syncers)


def sync_check(release: str, steps: int = 300, tolerance_frames: int = 1, train_split: str = "train",
               pyramid_path: str | None = None) -> dict:
    """Measure the offset of every held-out window: the pyramid is trained on `train_split` (and
    saved as `qa/sync_pyramid.pt`) or loaded from `pyramid_path` (trained elsewhere), and never
    checks the windows it learned "in sync" from — a shift shared by the data it trained on would
    otherwise pass as in sync. Writes `qa/sync_check.json`. Windows without landmarks are skipped."""
    def with_landmarks(split: str) -> list[dict]:
        return [w for w in release_features(release, split) if np.abs(w["video"]).sum() > 0]

    if pyramid_path:
        pyramid, trained_on = load_pyramid(pyramid_path), pyramid_path
        held_out = {s: with_landmarks(s) for s in R.SPLITS}
    else:
        train_set = with_landmarks(train_split)
        if not train_set:
            raise ValueError(f"{release}: no {train_split} window with landmarks to train the syncers on")
        pyramid, trained_on = train_pyramid(train_set, steps=steps), f"{release} ({train_split} split)"
        save_pyramid(pyramid, files.join(release, "qa", "sync_pyramid.pt"))
        held_out = {s: with_landmarks(s) for s in R.SPLITS if s != train_split}
    report = {"trained_on": trained_on, **check_windows(pyramid, held_out, tolerance_frames)}
    files.write_json_atomic(files.join(release, "qa", "sync_check.json"), report)
    return report


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2)
