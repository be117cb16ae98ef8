"""FLAME sequence optimisation speed: landmark-only path vs the full skinned mesh.

One release window (240 frames at 30 fps) of the procedural head with known motion: per-frame
fits (warmed up, timed as `per_frame_fit_fps`), outlier replacement, then
the sequence reprojection optimisation timed with the pipeline's settings, once on the
landmark-only path and once through smplx's full-mesh LBS (same steps, both with the subject's
fixed shape folded into their template once, both warmed up first).
Reports frames/s of each, their ratio, the reprojection error, the error of the recovered jaw
and head rotation against the truth, and peak RSS. Set SINGINGHEAD_FLAME_DIR to time the real
FLAME instead of the procedural head. Last line: one JSON object, also in bench/results/flame.json.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from results_io import publish  # noqa: E402

from singinghead.flame.ict import write_model  # noqa: E402
from singinghead.flame.layer import FlameLayer  # noqa: E402
from singinghead.flame.model import load_flame  # noqa: E402
from singinghead.samples.motion import known_sequence  # noqa: E402
from singinghead.schemas import motion as layout  # noqa: E402
from singinghead.schemas.settings import get_settings  # noqa: E402
from singinghead.tasks.flame_fit import fit_frames, fit_sequence, replace_frame_outliers  # noqa: E402

FRAMES = 240


def main() -> dict:
    folder = get_settings().flame_dir
    with tempfile.TemporaryDirectory() as tmp:
        model = load_flame(folder or write_model(tmp))
    layer = FlameLayer(model)
    truth = known_sequence(layer, FRAMES)
    fit_frames(layer, truth.observed[:8], truth.K, steps=2)  # warm-up (first-call costs)
    t0 = time.perf_counter()
    frames, _ = replace_frame_outliers(fit_frames(layer, truth.observed, truth.K))
    t_frames = time.perf_counter() - t0
    shape = frames.shape.mean(0)
    for full_mesh in (False, True):  # warm-up, both paths
        fit_sequence(layer, truth.observed, truth.K, shape, frames, steps=5, full_mesh=full_mesh)

    def timed(full_mesh: bool):
        t = time.perf_counter()
        fit = fit_sequence(layer, truth.observed, truth.K, shape, frames, full_mesh=full_mesh)
        return fit, time.perf_counter() - t

    seq, t_lmk = timed(False)
    _, t_mesh = timed(True)
    head = seq.motion[:, layout.GLOBAL_ORIENT] + seq.motion[:, layout.NECK]
    return {
        "name": "flame",
        "model": str(folder) if folder else "ICT head",
        "vertices": int(len(model.v_template)),
        "frames": FRAMES,
        "torch_threads": torch.get_num_threads(),
        "fps": FRAMES / t_lmk,
        "full_mesh_fps": FRAMES / t_mesh,
        "speedup_vs_full_mesh": t_mesh / t_lmk,
        "per_frame_fit_fps": FRAMES / t_frames,
        "reprojection_rmse_px": float(np.sqrt(np.mean(seq.error_px ** 2))),
        "jaw_mae_rad": float(np.abs(seq.motion[:, layout.JAW.start] - truth.motion[:, layout.JAW.start]).mean()),
        "head_rotation_mae_rad": float(np.abs(head - truth.motion[:, layout.GLOBAL_ORIENT]).mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "targets": {"fps": 300, "speedup_vs_full_mesh": 5},
    }


if __name__ == "__main__":
    publish(main())
