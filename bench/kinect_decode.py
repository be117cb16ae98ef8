"""Decode speed of the Kinect reader vs a bare ffmpeg decode of the same 4K MJPEG file.

Measures both full-resolution and 1/4-resolution (the analysis pass) decoding of the sample
session's take, reports frames/s, the ratio to ffmpeg (ours / reference time, lower is better)
and the peak RSS of the reader process. Prints one JSON object as its last line and writes it
to bench/results/kinect_decode.json.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import publish  # noqa: E402

from singinghead.capture_rigs.azure_kinect import KinectRecording  # noqa: E402
from singinghead.samples.session import build_sample_session  # noqa: E402
from singinghead.storage.assets import ffmpeg_exe  # noqa: E402


def ffmpeg_decode(path: Path, lowres: int) -> float:
    cmd = [ffmpeg_exe(), "-v", "error", "-threads", "0", *(["-lowres", str(lowres)] if lowres else []),
           "-i", str(path), "-f", "null", "-"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def ours(path: Path, scale: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    with KinectRecording(path) as rec:
        for _ in rec.frames(scale=scale):
            n += 1
    return time.perf_counter() - t0, n


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        session = build_sample_session(Path(tmp) / "s", seed=0, duration_s=10.0)
        video = session / "takes/take01/kinect.mkv"
        result = {"name": "kinect_decode", "file": "sample take, 3840x2160 MJPEG, 10 s"}
        for scale, lowres in ((1, 0), (4, 2)):
            ref = ffmpeg_decode(video, lowres)
            took, n = ours(video, scale)
            result[f"scale{scale}"] = {
                "frames": n, "fps": n / took, "ffmpeg_fps": n / ref, "ratio_vs_ffmpeg": took / ref,
            }
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return publish(result)


if __name__ == "__main__":
    main()
