"""Crop step vs a bare ffmpeg transcode of the same 60 s 4K30 MJPEG capture.

The reference is one ffmpeg run doing decode + crop + scale + libx264 with the crop step's own
encoder settings (preset, CRF, output size, pixel format) on the whole file. The crop step does
its analysis (MTCNN + dlib every 6 frames at reduced resolution) and encodes its segments.
`ratio` = crop_seconds / ffmpeg_seconds (target ≤ 1.3). Peak RSS is reported for this process
(the analysis: decoder, MTCNN, dlib) and for its largest child process (the capture renderer or
an ffmpeg encoder, whichever is larger). The capture is rendered in a separate process so its
memory does not count towards the analysis. Last line: one JSON object, also in bench/results/crop.json.
"""

from __future__ import annotations

import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from results_io import publish  # noqa: E402

from singinghead.samples import video  # noqa: E402
from singinghead.storage.assets import ffmpeg_exe  # noqa: E402
from singinghead.tasks.crop import CropParams, crop_take  # noqa: E402
from singinghead.tasks.landmarks import face_analyser  # noqa: E402

SECONDS = 60


def render(path: str) -> None:
    n = SECONDS * 30
    rng = np.random.default_rng(11)
    mouth = np.clip(np.sin(np.arange(n) / 7.0), 0, 1)
    motion = video.head_motion(n, mouth, [(25.0, 500.0)], rng)
    video.write_kinect_mkv(Path(path), motion, 0)


def main() -> dict:
    p = CropParams()
    with tempfile.TemporaryDirectory() as tmp:
        mkv = Path(tmp) / "take" / "kinect.mkv"
        mkv.parent.mkdir()
        proc = multiprocessing.get_context("spawn").Process(target=render, args=(str(mkv),))
        proc.start()
        proc.join()
        face_analyser(p.device)  # model loading is a one-off per worker, not per take

        t0 = time.perf_counter()
        refs = crop_take(mkv, "bench", str(Path(tmp) / "out"), p)
        crop_seconds = time.perf_counter() - t0

        size = 1000  # a typical crop of this capture
        cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(mkv), "-an", "-vf",
               f"crop={size}:{size}:1400:380,scale={p.output_size}:{p.output_size}:flags=bicubic:out_range=tv,"
               "format=yuv420p", "-c:v", "libx264", "-preset", p.preset, "-crf", str(p.crf),
               str(Path(tmp) / "reference.mp4")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        ffmpeg_seconds = time.perf_counter() - t0

    result = {
        "name": "crop", "frames": SECONDS * 30, "seconds_of_video": SECONDS,
        "segments": sum(1 for r in refs if r.meta.get("kind") == "portrait_video"),
        "crop_seconds": round(crop_seconds, 2), "ffmpeg_seconds": round(ffmpeg_seconds, 2),
        "ratio": round(crop_seconds / ffmpeg_seconds, 3),
        "realtime_factor": round(SECONDS / crop_seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_child_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    return publish(result)


if __name__ == "__main__":
    main()
