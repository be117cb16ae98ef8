"""Per-identity training of the face renderer from a release (the papers train one network per
person). Inputs per frame: the depth of the fitted FLAME mesh rendered with the segment camera
(`render.render_depth_sequence`), the identity's reference image (the first frame of its first
window) and the frame index for the temporal embedding; target: the portrait frame."""

from __future__ import annotations

import random
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import torch

from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.schemas.settings import get_settings, torch_device
from singinghead.storage import files
from singinghead.storage import release as store
from singinghead.trainer.models.renderer import (
    PatchDiscriminator,
    RendererWeights,
    UNetGenerator,
    perceptual_loss,
    renderer_step,
)
from singinghead.trainer.render import render_depth_sequence
from singinghead.trainer.train import load_checkpoint, resolve_assets


def depth_to_input(depth: torch.Tensor) -> torch.Tensor:
    """Depth (metres, 0 = background) → [−1, 1]: near is bright, background −1 (inverse depth
    normalised per frame over the foreground)."""
    fg = depth > 0
    inv = torch.where(fg, 1.0 / depth.clamp(min=1e-6), torch.zeros_like(depth))
    out = torch.full_like(depth, -1.0)
    for i in range(len(depth)):
        if fg[i].any():
            v = inv[i][fg[i]]
            out[i][fg[i]] = (inv[i][fg[i]] - v.min()) / (v.max() - v.min() + 1e-9) * 1.8 - 0.8
    return out


def decode_frames(url: str, size: int) -> torch.Tensor:
    """(T, 3, size, size) RGB in [−1, 1]."""
    frames = []
    fs, path = files.url_to_fs(url)
    with fs.open(path, "rb") as fh, av.open(fh) as c:
        for frame in c.decode(c.streams.video[0]):
            frames.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


class WindowDepth:
    """A window's depth inputs (T, 1, size, size) on the host, each frame rendered the first time a
    step draws it: a short run (the demo's, the tests') draws a few of the 240 frames, a long one
    renders each once, as rendering the window up front did. A frame's depth and its normalisation
    are its own: one frame at a time gives the batch's values up to float rounding (≤ 1.2·10⁻⁴ of
    the [−0.8, 1] input on the sample release)."""

    def __init__(self, layer: FlameLayer, arrays: dict[str, np.ndarray], size: int):
        on = layer.v_template.device  # rendered where the layer is, kept on the host between steps
        self._layer, self._size = layer, size
        self._inputs = {k: torch.as_tensor(arrays[k][0], device=on) for k in ("shape", "motion", "translation",
                                                                              "camera")}
        self._frames: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._inputs["motion"])

    def __getitem__(self, frame: int) -> torch.Tensor:
        if frame not in self._frames:
            i = self._inputs
            with torch.no_grad():
                depth = render_depth_sequence(self._layer, i["shape"], i["motion"][frame:frame + 1],
                                              i["translation"][frame:frame + 1], i["camera"], self._size)
            self._frames[frame] = depth_to_input(depth)[0, None].cpu()
        return self._frames[frame]


def identity_windows(release: str, subject: str, layer: FlameLayer, size: int, max_windows: int | None = None,
                     split: str = "train") -> list[dict]:
    """The identity's windows of one split (the renderer never sees the windows it is scored on)."""
    rows = [r for r in store.read_manifest(release).to_pylist() if r["subject_id"] == subject and r["split"] == split]
    if not rows:
        raise ValueError(f"{release}: no {split} window of subject {subject!r}")
    out = []
    for r in sorted(rows, key=lambda r: r["window_id"])[:max_windows]:
        table = pq.read_table(files.join(release, r["shard_path"]))
        a = store.arrays(table.slice(r["shard_row"], 1), ["motion", "translation", "camera", "shape"])
        if not np.isfinite(a["camera"]).all():
            continue  # imported windows carry no camera: nothing to render depth with
        out.append({"window_id": r["window_id"], "depth": WindowDepth(layer, a, size),
                    "frames": decode_frames(files.join(release, r["video_path"]), size)})
    if not out:
        raise ValueError(f"{release}: no window of {subject!r} has a camera to render depth with")
    return out


def train_renderer(release: str, subject: str, out: str | Path, steps: int = 1000, size: int = 256,
                   batch_size: int = 1, lr: float = 2e-4, seed: int = 0, max_windows: int | None = None,
                   channels: tuple[int, ...] | None = None, split: str = "train") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    torch.manual_seed(seed)
    device = torch_device()
    flame_dir, _ = resolve_assets(out)
    layer = FlameLayer(load_flame(flame_dir)).to(device)
    windows = identity_windows(release, subject, layer, size, max_windows, split)
    reference = windows[0]["frames"][0]
    gen = UNetGenerator(**({"channels": channels} if channels else {})).to(device)
    disc = PatchDiscriminator().to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr, betas=(0.5, 0.999))
    vgg = perceptual_loss(get_settings().vgg19_weights)
    vgg = vgg.to(device) if vgg is not None else None
    log = []
    for step in range(steps):
        picks = [(random.randrange(len(windows)), random.randrange(len(windows[0]["frames"])))
                 for _ in range(batch_size)]
        batch = {"depth": torch.stack([windows[w]["depth"][f] for w, f in picks]),
                 "target": torch.stack([windows[w]["frames"][f] for w, f in picks]),
                 "reference": reference[None].expand(batch_size, -1, -1, -1),
                 "frame": torch.tensor([f for _, f in picks])}
        batch = {k: v.to(device) for k, v in batch.items()}
        log.append({"step": step + 1, **renderer_step(gen, disc, opt_g, opt_d, batch, RendererWeights(), vgg)})
    ckpt = out / "renderer.pt"
    torch.save({"generator": {k: v.cpu() for k, v in gen.state_dict().items()}, "reference": reference,
                "subject": subject, "size": size, "channels": list(channels) if channels else None,
                "perceptual": vgg is not None, "trained_on": [w["window_id"] for w in windows]}, ckpt)
    files.write_json_atomic(str(out / "renderer_log.json"), log)
    return {"checkpoint": str(ckpt), "steps": steps, "windows": len(windows), "log": log}


def load_renderer(checkpoint: str | Path) -> tuple[UNetGenerator, dict]:
    state = load_checkpoint(checkpoint)
    gen = UNetGenerator(**({"channels": tuple(state["channels"])} if state.get("channels") else {}))
    gen.load_state_dict(state["generator"])
    return gen.to(torch_device()).eval(), state
