"""Real faces, known motion: the tracking's accuracy against truth that no tracker produced.

Every real talking clip in `../shared/data/talking_face/` becomes a capture-like take
(`singinghead.samples.realfaces`: the clip played forward–backward–forward, each frame moved over
the 4K canvas by a known affine with sway, roll up to ±15°, zoom 0.8–1.3 and a lean that forces a
crop cut; the truth is dlib's own detection on the unmoved clip frame mapped through the affine).
All takes go through `process` (the Prefect flow on a local Dask cluster), then per clip and
overall: released landmarks against the truth (mean point error per frame in inter-ocular
distances: median, p95, share beyond 0.1), FLAME reprojection error (px at 1024², against the
detections), the share of frames with a parameter group replaced as a box-plot outlier, seconds
kept by the crop against seconds with a face, peak RSS of this process and of the workers.
The FLAME model is the settings' (SINGINGHEAD_FLAME_DIR) or the packaged ICT head.

Targets (issue 14): landmark_p95_iod ≤ 0.08, reprojection_median_px ≤ 4, reprojection_p95_px
≤ 10, outlier_share ≤ 0.05, seconds_kept_share ≥ 0.9. Last line: one JSON object, also in
bench/results/realfaces.json.
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
from results_io import publish  # noqa: E402

from singinghead.flows.process_session import run_process_sessions  # noqa: E402
from singinghead.samples.realfaces import build_realface_session, score_take  # noqa: E402
from singinghead.schemas.settings import get_settings  # noqa: E402

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "talking_face"
TARGETS = {"landmark_p95_iod": ("<=", 0.08), "reprojection_median_px": ("<=", 4.0),
           "reprojection_p95_px": ("<=", 10.0), "outlier_share": ("<=", 0.05), "seconds_kept_share": (">=", 0.9)}


def pooled(per_clip: dict[str, dict], key: str, weight: str = "frames") -> float:
    w = np.array([r[weight] for r in per_clip.values()], dtype=float)
    return float(np.average([r[key] for r in per_clip.values()], weights=w))


def main() -> dict:
    clips = sorted(CLIPS.glob("clip*.mp4"))
    if not clips:
        raise SystemExit(f"{CLIPS}: no real talking clips (the project's shared data is needed beside the repo)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sessions = [build_realface_session(c, tmp / "sessions" / c.stem, video_to_mic=0.3, seed=i)
                    for i, c in enumerate(clips)]
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_process_sessions(sessions, tmp / "out")
        t_process = time.perf_counter() - t0
        per_clip = {c.stem: score_take(tmp / "out", s) for c, s in zip(clips, sessions, strict=True)}
    frames = [r.pop("per_frame") for r in per_clip.values()]
    err = np.concatenate([f["landmark_iod"] for f in frames])
    reproj = np.concatenate([f["reprojection_px"] for f in frames])
    reproj = reproj[np.isfinite(reproj)]
    result = {
        "name": "realfaces", "clips": len(clips), "flame": str(get_settings().flame_dir or "ICT head (packaged)"),
        "frames": int(len(err)),
        "landmark_median_iod": round(float(np.median(err)), 4),
        "landmark_p95_iod": round(float(np.percentile(err, 95)), 4),
        "landmark_share_over_0.1_iod": round(float(np.mean(err > 0.1)), 4),
        "reprojection_median_px": round(float(np.median(reproj)), 2),
        "reprojection_p95_px": round(float(np.percentile(reproj, 95)), 2),
        "outlier_share": round(pooled(per_clip, "outlier_share"), 4),
        "seconds_kept_share": round(sum(r["seconds_kept"] for r in per_clip.values())
                                    / sum(r["seconds_with_face"] for r in per_clip.values()), 4),
        "build_s": round(t_build, 1), "process_s": round(t_process, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "per_clip": per_clip,
    }
    result["targets_met"] = {k: (result[k] <= v if op == "<=" else result[k] >= v) for k, (op, v) in TARGETS.items()}
    return result


if __name__ == "__main__":
    publish(main())
