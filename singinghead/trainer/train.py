"""Training loop: AdamW, warm-up + cosine schedule, AMP on CUDA, gradient clipping, checkpoints
with exact resume, CSV log, progress bar, seeded determinism.

A run folder holds `config.yaml`, `log.csv` (one row per step), `checkpoints/step-<n>.pt` and
`checkpoints/last.pt`. Resume restores model, optimiser, schedule, scaler, RNG states and the
position in the epoch (the reader's order is a function of seed and epoch, so the remaining
batches of the epoch are the same ones); the next step's loss equals the uninterrupted run's.
"""

from __future__ import annotations

import csv
import math
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from singinghead.flame.ict import write_model
from singinghead.flame.layer import FlameLayer
from singinghead.flame.model import load_flame
from singinghead.schemas.settings import get_settings, torch_device
from singinghead.trainer.data import ReleaseWindows
from singinghead.trainer.losses import LossWeights, total_loss
from singinghead.trainer.models.audio import wav2vec2_folder
from singinghead.trainer.models.vae import MODELS, ModelConfig


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "runs/unisinger"
    variant: str = "unisinger"  # or "faceformer" (the deterministic baseline)
    model: ModelConfig = field(default_factory=ModelConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 0
    amp: bool = True  # used on CUDA only
    checkpoint_every: int = 500
    split: str = "train"

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> TrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) if path else {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        model = ModelConfig(**raw.pop("model", {}))
        weights = LossWeights(**raw.pop("weights", {}))
        return cls(model=model, weights=weights, **raw)


def resolve_assets(run_dir: Path) -> tuple[Path, Path]:
    """(FLAME folder, wav2vec 2.0 folder): the settings', else stand-ins written into the run."""
    flame = get_settings().flame_dir or run_dir / "assets" / "flame-ict"
    if not (Path(flame) / "generic_model.pkl").is_file():
        write_model(flame)
    return Path(flame), wav2vec2_folder(run_dir / "assets" / "wav2vec2-tiny")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, wav2vec2_dir: Path) -> torch.nn.Module:
    if cfg.variant not in MODELS:
        raise ValueError(f"variant must be one of {sorted(MODELS)}, not {cfg.variant!r}")
    return MODELS[cfg.variant](wav2vec2_dir, cfg.model)


def _schedule(opt, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _batches(ds: ReleaseWindows, cfg: TrainConfig, epoch: int):
    ds.set_epoch(epoch)
    g = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, generator=g,
                      multiprocessing_context="spawn" if cfg.workers else None)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    run = Path(cfg.out)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    device = torch_device()  # SINGINGHEAD_DEVICE (auto: CUDA when available)
    seed_everything(cfg.seed)
    flame_dir, w2v_dir = resolve_assets(run)
    model = build_model(cfg, w2v_dir).to(device)
    flame_model = load_flame(flame_dir)
    layer = FlameLayer(flame_model).to(device)
    face = torch.as_tensor(flame_model.masks["face"], device=device)
    ds = ReleaseWindows(cfg.data, cfg.split, fields=("motion", "shape", "bgm_mfcc"), audio=("singing",),
                        shuffle=True, shuffle_buffer=64, seed=cfg.seed)
    if len(ds) == 0:
        raise ValueError(f"{cfg.data}: the {cfg.split} split has no windows")
    per_epoch = math.ceil(len(ds) / cfg.batch_size)
    total = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, cfg.warmup_steps, total)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, start_epoch, skip = 0, 0, 0
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        state = load_checkpoint(last, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, start_epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_python_rng(state["python_rng"]))
        kind, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    log_path = run / "log.csv"
    new_log = not log_path.is_file()
    bar = tqdm(total=total, initial=step, disable=not progress, desc=cfg.variant)
    with open(log_path, "a", newline="") as log:
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "epoch", "lr", "loss", "rec", "vel", "kl", "mesh"])
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            bar.set_description(f"{cfg.variant} epoch {epoch + 1}/{cfg.epochs}")
            for i, batch in enumerate(_batches(ds, cfg, epoch)):
                if epoch == start_epoch and i < skip:
                    continue
                if step >= total:
                    break
                batch = _to(batch, device)
                with torch.autocast(device.type, enabled=use_amp):
                    out = model(batch["motion"], batch["shape"], batch["singing"], batch["bgm_mfcc"])
                terms = total_loss(out, batch, cfg.weights, layer, face)
                opt.zero_grad(set_to_none=True)
                scaler.scale(terms["loss"]).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                writer.writerow([step, epoch, sched.get_last_lr()[0]] + [
                    float(terms[k].detach()) if k in terms else "" for k in ("loss", "rec", "vel", "kl", "mesh")])
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
                if step % cfg.checkpoint_every == 0 or step == total:
                    save_checkpoint(run, model, opt, sched, scaler, cfg, step, epoch, i + 1)
            skip = 0
            if step >= total:
                break
    bar.close()
    return {"run": str(run), "steps": step, "checkpoint": str(last), "log": str(log_path)}


def _numpy_rng() -> tuple:
    """numpy's global RNG state as tensors and plain values (a checkpoint holds nothing else)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _python_rng(state) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint of ours, read as tensors and plain containers only (`weights_only=True`): a
    file that holds anything else (code to run on unpickling) is refused with its name."""
    import pickle

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a singinghead checkpoint of tensors and plain values (refused to unpickle "
                         f"it): {str(exc).splitlines()[0]}") from exc


def save_checkpoint(run: Path, model, opt, sched, scaler, cfg: TrainConfig, step: int, epoch: int,
                    batch_in_epoch: int) -> Path:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "numpy_rng": _numpy_rng(),
             "config": asdict(cfg)}
    path = run / "checkpoints" / f"step-{step:07d}.pt"
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        torch.save(state, tmp)
    Path(tmp.name).replace(path)
    last = run / "checkpoints" / "last.pt"
    tmp_last = last.with_suffix(".tmp")
    tmp_last.write_bytes(path.read_bytes())
    tmp_last.replace(last)
    return path


def load_for_inference(checkpoint: str | Path) -> tuple[torch.nn.Module, TrainConfig, Path]:
    """The model of a checkpoint (eval mode) with its config and run folder."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    raw = dict(state["config"])
    cfg = TrainConfig(model=ModelConfig(**raw.pop("model")), weights=LossWeights(**raw.pop("weights")), **raw)
    run = checkpoint.parent.parent
    _, w2v = resolve_assets(run)
    model = build_model(cfg, w2v)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, run
