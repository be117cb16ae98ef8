"""`singinghead evaluate`: the journal's Table II (and the conference's MinDist/MeanDist/APD) for a
checkpoint on a release split, for n = 1, 10, 30 samples per window.

Units as in the journal's table: LVE and FVE in mm, FDD in ×10⁻² mm. FPS is one definition for
every model: frames generated per second for one sample (batch 1) of an 8 s window, wav2vec 2.0
included, after a warm-up call, on the device the model runs on (reported beside it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from singinghead.features.face import eye_closure
from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.schemas import motion as layout
from singinghead.schemas.settings import torch_device
from singinghead.storage import release as store
from singinghead.trainer.data import ReleaseWindows
from singinghead.trainer.losses import posed_vertices
from singinghead.trainer.metrics import beat, eyes, motion
from singinghead.trainer.train import load_for_inference, resolve_assets

HEAD_COLUMNS = ["CCA pose speed", "Rough", "Rough GT"]  # MusicFace's head metrics, first sample
#: MusicFace's eye metrics (first sample), per sequence: eye closure from the eyelid points of the
#: 68-landmark embedding of the generated FLAME expression (head pose removed), with the same
#: definition and per-sequence normalisation as the measured eye closure (features.face).
EYE_COLUMNS = ["CCA eye state", "Blinks/s", "Blinks/s GT", "Blink s", "Blink s GT"]
COLUMNS = ["n", "LVE mean", "LVE min", "FVE mean", "FVE min", "FDD", "PPE", "BA", "Diversity", "MinDist",
           "MeanDist", "APD", "FPS"]


def evaluate(checkpoint: str | Path, data: str, split: str = "test", samples: tuple[int, ...] = (1, 10, 30),
             seed: int = 0, max_windows: int | None = None, ground_truth_as_prediction: bool = False) -> list[dict]:
    """Rows per n. `ground_truth_as_prediction` scores the ground truth itself through the same path
    (the tables' "GT" row; its error metrics are 0 by definition — a check of the path)."""
    model, cfg, run = load_for_inference(checkpoint)
    on = torch_device()  # the model runs there; its motion comes back to the CPU, where the metrics are
    model = model.to(on)
    flame_dir, _ = resolve_assets(run)
    fm = load_flame(flame_dir)
    layer = FlameLayer(fm)
    masks = {k: torch.as_tensor(v) for k, v in fm.masks.items()}
    upper = torch.unique(torch.cat([masks["forehead"], masks["eye_region"]]))
    ds = ReleaseWindows(data, split, fields=("motion", "shape", "bgm_mfcc"), audio=("singing",))
    if len(ds) == 0:
        raise ValueError(f"{data}: the {split} split has no windows")
    n_max = max(samples)
    deterministic = cfg.variant != "unisinger"
    per_n: dict[int, dict[str, list[float]]] = {n: {c: [] for c in COLUMNS[1:] + HEAD_COLUMNS} for n in samples}
    eyelids: dict[str, list[tuple[str, np.ndarray]]] = {}  # sequence → (window id, (2, T, 68, 2) GT and sample 1)
    g = torch.Generator().manual_seed(seed)
    first = None
    for k, w in enumerate(ds):
        if max_windows is not None and k >= max_windows:
            break
        first = first or w
        n_gen = 1 if deterministic else n_max
        shape = w["shape"][None].expand(n_gen, -1)
        pred = model.generate(shape.to(on), w["singing"][None].expand(n_gen, -1).to(on),
                              w["bgm_mfcc"][None].expand(n_gen, -1, -1).to(on), generator=g).cpu()
        if ground_truth_as_prediction:
            pred = w["motion"][None].expand(n_gen, -1, -1)
        if deterministic:
            pred = pred.expand(n_max, -1, -1)
        gt = w["motion"]
        with torch.no_grad():
            both = torch.cat([gt[None], pred])
            verts = {name: posed_vertices(layer, w["shape"][None].expand(len(both), -1), both, idx,
                                          with_head_pose=False)
                     for name, idx in (("lips", masks["lips"]), ("face", masks["face"]), ("upper", upper))}
            neutral = layer.vertices(w["shape"][None], torch.zeros(1, 50), torch.zeros(1, 3), torch.zeros(1, 3),
                                     torch.zeros(1, 3), upper)[0]
            m = both.reshape(-1, layout.MOTION_DIM)
            lmk = layer.landmarks(w["shape"][None].expand(len(m), -1), m[:, layout.EXPRESSION],
                                  m[:, layout.GLOBAL_ORIENT], m[:, layout.NECK], m[:, layout.JAW])
            lmk = lmk.view(len(both), -1, 68, 3)
            two = both[:2].reshape(-1, layout.MOTION_DIM)
            zero = torch.zeros(len(two), 3)
            front = layer.landmarks(w["shape"][None].expand(len(two), -1), two[:, layout.EXPRESSION], zero, zero,
                                    two[:, layout.JAW]).view(2, -1, 68, 3)[..., :2]
        eyelids.setdefault(w["window_id"].rsplit("_w", 1)[0], []).append((w["window_id"], front.numpy()))
        audio_beats = beat.audio_beats(w["singing"].numpy())
        for n in samples:
            lv = motion.lve(verts["lips"][1:n + 1], verts["lips"][0])
            fv = motion.fve(verts["face"][1:n + 1], verts["face"][0])
            mind, meand = motion.min_mean_dist(pred[:n], gt)
            row = per_n[n]
            row["LVE mean"].append(float(lv.mean()))
            row["LVE min"].append(float(lv.min()))
            row["FVE mean"].append(float(fv.mean()))
            row["FVE min"].append(float(fv.min()))
            row["FDD"].append(100 * float(motion.fdd(verts["upper"][1:n + 1], verts["upper"][0], neutral).mean()))
            row["PPE"].append(float(motion.ppe(pred[:n], gt).mean()))
            row["BA"].append(float(np.nanmean([beat.beat_align(beat.motion_beats(p), audio_beats) for p in pred[:n]])))
            row["Diversity"].append(float(motion.diversity(lmk[1:n + 1])))
            row["MinDist"].append(float(mind))
            row["MeanDist"].append(float(meand))
            row["APD"].append(float(motion.apd(pred[:n])))
            row["CCA pose speed"].append(eyes.canonical_correlation(eyes.head_speed(pred[0].numpy()),
                                                                    eyes.head_speed(gt.numpy())))
            row["Rough"].append(eyes.roughness(pred[0].numpy()))
            row["Rough GT"].append(eyes.roughness(gt.numpy()))
    fps, device = per_sample_fps(model, first)
    eye_row = eye_metrics(eyelids)
    return [{"n": n, **{c: float(np.nanmean(v)) if len(v) else float("nan") for c, v in per_n[n].items()},
             **eye_row, "FPS": fps, "device": device} for n in samples]


def eye_metrics(eyelids: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, float]:
    """MusicFace's eye-state CCA and blink rate/duration, generated vs ground truth, on each
    sequence's windows joined in order (eye closure is normalised per sequence), averaged."""
    cols: dict[str, list[float]] = {c: [] for c in EYE_COLUMNS}
    for windows in eyelids.values():
        both = np.concatenate([lmk for _, lmk in sorted(windows, key=lambda item: item[0])], axis=1)
        gt, gen = eye_closure(both[0]), eye_closure(both[1])
        if np.ptp(gt) > 1e-9 and np.ptp(gen) > 1e-9:
            cols["CCA eye state"].append(eyes.canonical_correlation(gen, gt))
        s_gen, s_gt = eyes.blink_stats(gen.mean(axis=1)), eyes.blink_stats(gt.mean(axis=1))
        cols["Blinks/s"].append(s_gen["blinks_per_s"])
        cols["Blinks/s GT"].append(s_gt["blinks_per_s"])
        cols["Blink s"].append(s_gen["blink_duration_s"])
        cols["Blink s GT"].append(s_gt["blink_duration_s"])
    return {c: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in cols.items()}


@torch.no_grad()
def per_sample_fps(model, window: dict, repeats: int = 3, seed: int = 0) -> tuple[float, str]:
    """Frames per second generating one sample (batch 1) of `window`, wav2vec 2.0 included, after
    one warm-up call; and the device it ran on."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    args = (window["shape"][None].to(device), window["singing"][None].to(device), window["bgm_mfcc"][None].to(device))
    model.generate(*args, generator=g)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        frames = model.generate(*args, generator=g).shape[1]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return frames * repeats / (time.perf_counter() - t0), str(device)


def table_markdown(rows: list[dict], title: str) -> str:
    def table(columns):
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            lines.append("| " + " | ".join(str(r["n"]) if c == "n" else f"{r[c]:.4f}" for c in columns) + " |")
        return "\n".join(lines) + "\n"

    device = rows[0].get("device", "?") if rows else "?"
    units = f"LVE, FVE in mm; FDD in ×10⁻² mm; FPS per sample (batch 1, wav2vec 2.0 included) on {device}."
    return (f"### {title}\n\n" + table(COLUMNS) + f"\n{units}\n\nMusicFace head and eye metrics (first sample; "
            "roughness in deg²/s⁴; eye state from the generated expression's eyelid points, per sequence):\n\n"
            + table(["n", *HEAD_COLUMNS, *EYE_COLUMNS]))


def split_with_windows(data: str, preferred: str = "test") -> str:
    """`preferred` if it has windows, else the first split that has (small demo releases)."""
    counts = {}
    for r in store.read_manifest(data).to_pylist():
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    if counts.get(preferred):
        return preferred
    return next(s for s in ("test", "val", "train") if counts.get(s))
