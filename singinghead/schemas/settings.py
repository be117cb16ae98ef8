"""Settings from the environment (prefix SINGINGHEAD_) or a `.env` file.

Model assets are user-provided files; nothing is downloaded at run time. Each setting names
what it points at so a missing-asset error can tell the operator exactly what to provide.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SINGINGHEAD_", env_file=".env", extra="ignore")

    #: ffmpeg executable; default: the binary shipped by imageio-ffmpeg, else `ffmpeg` on PATH.
    ffmpeg: str | None = None
    #: Dask scheduler address (tcp://host:8786); empty = a local cluster per flow run.
    dask_address: str | None = None
    #: Local Dask cluster size when no address is given.
    dask_workers: int = 2
    dask_threads_per_worker: int = 1
    #: The GPU steps ask Dask for one `GPU` resource each (and carry the Prefect tag `gpu`), so a worker started with
    #: `--resources GPU=n` runs at most n of them at once and CPU-only workers run none.
    dask_gpu_resource: bool = False
    #: `GPU` resource of each local-cluster worker when dask_gpu_resource is on.
    local_gpus_per_worker: int = 1
    #: COLMAP's own (glog) progress lines during photogrammetry; off = errors only.
    colmap_verbose: bool = False
    #: Where torch steps run (MTCNN, syncnet, demucs, the FLAME per-frame and sequence fits,
    #: training): auto = the first CUDA device when there is one, else the CPU; or cpu, cuda, cuda:1…
    device: str = "auto"
    #: Adam steps of the monocular per-frame FLAME fits and of the sequence fit (both part of the
    #: steps' catalog keys). Per-frame fits on real footage still improve up to 1,000 steps (median
    #: reprojection 2.5 px at 500, 2.1 px at 1,000): fewer steps trade accuracy for time.
    flame_frame_steps: PositiveInt = 1000
    flame_sequence_steps: PositiveInt = 500
    #: Portrait segments shorter than this are dropped (SPEC §2.1: 3 s). Part of the crop's catalog
    #: key. A release only cuts 8 s windows, so a lab may raise it to skip segments no window uses.
    crop_min_seconds: PositiveFloat = 3.0
    #: FLAME 2020/2023 `generic_model.pkl` folder (with landmark embedding and FLAME_masks.pkl).
    flame_dir: Path | None = None
    #: A wav2vec 2.0 checkpoint folder in transformers' format (config.json + weights), e.g.
    #: facebook/wav2vec2-base-960h downloaded beforehand; the trainer never downloads.
    wav2vec2_dir: Path | None = None
    #: torchvision VGG-19 state dict (.pth) for the renderer's perceptual loss; unset = loss off.
    vgg19_weights: Path | None = None
    #: torchvision Inception-v3 state dict (.pth) for FID; unset = FID not reported.
    inception_weights: Path | None = None
    #: LPIPS: torchvision AlexNet state dict and the LPIPS linear layers (`alex.pth`); unset = n/a.
    alexnet_weights: Path | None = None
    lpips_weights: Path | None = None
    #: SyncNet weights (`syncnet_v2.model` of the SyncNet authors' release) for the video→mic offset;
    #: unset = the mouth-opening vs loudness heuristic, which leaves most real takes `unverified`.
    syncnet_weights: Path | None = None
    #: Vocal removal backend: builtin (no weights), demucs (local model folder) or spleeter.
    separation_backend: str = "builtin"
    #: Folder with demucs models in demucs' own format (`<sig>.th`, optional `<name>.yaml` bags).
    demucs_dir: Path | None = None
    #: Model name in that folder (a bag name such as `htdemucs`, or a single signature).
    demucs_model: str = "htdemucs"
    #: Python environment where spleeter 2.4.2 is installed (its pins need Python < 3.12, numpy < 2).
    spleeter_env: Path | None = None
    #: Spleeter's `pretrained_models` folder (its MODEL_PATH), so it never downloads.
    spleeter_models: Path | None = None


def get_settings() -> Settings:
    return Settings()


def torch_device(name: str | None = None):
    """The torch device named by the settings (or `name`); "auto" = CUDA when available, else CPU."""
    import torch

    name = name or get_settings().device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def channels_last(module):
    """`module` with its conv weights channels-last (4-d) and channels-last-3d (5-d), in place:
    the activations follow, and this CPU build of torch max-pools channels-first activations
    9–25× slower (MTCNN's R- and O-Net, SyncNet, Inception-v3). Same results to float rounding;
    bench/face_detect.py measures it."""
    import torch

    for p in module.parameters():
        if p.dim() in (4, 5):
            p.data = p.data.contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.channels_last_3d)
    return module
