"""UniSinger inference speed on CPU: 8 s windows, base configuration, random weights.

wav2vec 2.0 base-sized (95 M parameters, written with save_pretrained and loaded the normal
way), d = 256, 4 heads, 2 layers. `fps` = generated frames per second for one window at a time
(audio encoding included, after a warm-up), as the papers report; `batched_fps` for 4 windows per
call; `autoregressive_fps` for the FaceFormer-style baseline that decodes frame by frame.
Last line: one JSON object, also in bench/results/unisinger.json (target: fps ≥ 50).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from results_io import publish  # noqa: E402

from singinghead.schemas import release as R  # noqa: E402
from singinghead.trainer.models.audio import write_random_wav2vec2  # noqa: E402
from singinghead.trainer.models.vae import FaceFormerStyle, ModelConfig, UniSingerVAE  # noqa: E402


def frames_per_second(model, batch: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(batch, 100, generator=g)
    singing = 0.1 * torch.randn(batch, R.WINDOW_SAMPLES, generator=g)
    mfcc = torch.randn(batch, R.WINDOW_FRAMES, 64, generator=g)
    with torch.inference_mode():
        model.generate(shape, singing, mfcc)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = model.generate(shape, singing, mfcc)
        elapsed = time.perf_counter() - t0
    assert out.shape == (batch, R.WINDOW_FRAMES, 59)
    return repeats * batch * R.WINDOW_FRAMES / elapsed


def main() -> dict:
    cfg = ModelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        w2v = write_random_wav2vec2(Path(tmp) / "wav2vec2-base", preset="base")
        torch.manual_seed(0)
        vae = UniSingerVAE(w2v, cfg).eval()
        baseline = FaceFormerStyle(w2v, cfg).eval()
    n_params = sum(p.numel() for p in vae.parameters())
    fps = frames_per_second(vae, 1, 5)
    batched = frames_per_second(vae, 4, 2)
    autoregressive = frames_per_second(baseline, 1, 1)
    return {
        "name": "unisinger",
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "parameters_m": n_params / 1e6, "d_model": cfg.d_model, "layers": cfg.layers, "window_frames": R.WINDOW_FRAMES,
        "fps": fps, "batched_fps": batched, "autoregressive_fps": autoregressive,
        "speedup_vs_autoregressive": fps / autoregressive,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "target": {"fps": 50},
    }


if __name__ == "__main__":
    publish(main())
