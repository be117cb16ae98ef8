"""MTCNN face detection as the pipeline runs it vs facenet-pytorch's default layout.

Frames of the five real talking clips (../shared/data/talking_face), every 10th of the first
200, each searched as the dense landmarks search it: a window twice the face's size at 256 px
(`crop_detect_width`), and whole frames at 640 px (`detect_width`). The reference is the same
MTCNN with the library's default (channels-first) weights; ours holds them channels-last
(`tasks.landmarks.channels_last`). Both on one torch thread (as a Dask worker runs), both warmed
up, timed in alternating rounds. Reports ms per detection of each, the speed-up, and the
largest difference in boxes (px) and probabilities between the two. Last line: one JSON object,
also in bench/results/face_detect.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from results_io import publish  # noqa: E402

from singinghead.schemas.settings import channels_last  # noqa: E402
from singinghead.tasks.crop import CropParams  # noqa: E402
from singinghead.tasks.landmarks import CROP_DETECT_WIDTH  # noqa: E402

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "talking_face"
ROUNDS = 3


def clip_images(path: Path, n: int = 20, every: int = 10) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(search windows at 256 px, whole frames at 640 px) of one clip."""
    from facenet_pytorch import MTCNN

    finder = MTCNN(keep_all=True, post_process=False, min_face_size=40)
    windows, frames = [], []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            boxes, _ = finder.detect(rgb)
            if boxes is None:
                continue
            x0, y0, x1, y1 = boxes[0]
            side = 2 * max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            top, left = int(max(0, cy - side / 2)), int(max(0, cx - side / 2))
            window = rgb[top:int(cy + side / 2), left:int(cx + side / 2)]
            windows.append(cv2.resize(window, (CROP_DETECT_WIDTH, CROP_DETECT_WIDTH), interpolation=cv2.INTER_AREA))
            width = CropParams.detect_width
            height = int(rgb.shape[0] * width / rgb.shape[1])
            frames.append(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
            if len(windows) == n:
                break
    return windows, frames


def timed(mtcnn, images: list[np.ndarray]) -> tuple[float, list]:
    start = time.perf_counter()
    found = [mtcnn.detect(img) for img in images]
    return (time.perf_counter() - start) / len(images) * 1000, found


def main() -> dict:
    from facenet_pytorch import MTCNN

    clips = sorted(CLIPS.glob("*.mp4"))
    if not clips:
        raise SystemExit(f"{CLIPS}: no real talking clips (the project's shared data is needed beside the repo)")
    torch.set_num_threads(1)
    images = [clip_images(c) for c in clips]
    result = {"name": "face_detect", "clips": len(clips), "torch_threads": 1}
    for kind, k, min_face in (("window_256", 0, 64), ("frame_640", 1, 40)):
        imgs = [img for per_clip in images for img in per_clip[k]]
        reference = MTCNN(keep_all=True, post_process=False, min_face_size=min_face)
        ours = channels_last(MTCNN(keep_all=True, post_process=False, min_face_size=min_face))
        for m in (reference, ours):
            timed(m, imgs[:3])
        ref_ms, ours_ms = [], []
        for _ in range(ROUNDS):
            ms, ref_found = timed(reference, imgs)
            ref_ms.append(ms)
            ms, our_found = timed(ours, imgs)
            ours_ms.append(ms)
        same_count = all((a[0] is None) == (b[0] is None) and (a[0] is None or len(a[0]) == len(b[0]))
                         for a, b in zip(ref_found, our_found, strict=True))
        pairs = [(a, b) for a, b in zip(ref_found, our_found, strict=True) if a[0] is not None and b[0] is not None]
        result[kind] = {
            "images": len(imgs), "reference_ms": round(min(ref_ms), 2), "ours_ms": round(min(ours_ms), 2),
            "speedup": round(min(ref_ms) / min(ours_ms), 2), "same_faces": same_count,
            "max_box_diff_px": float(max(np.abs(a[0] - b[0]).max() for a, b in pairs)) if same_count else None,
            "max_prob_diff": float(max(np.abs(a[1] - b[1]).max() for a, b in pairs)) if same_count else None,
        }
    return publish(result)


if __name__ == "__main__":
    main()
