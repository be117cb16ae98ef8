"""Dense per-frame 68-point landmarks on portrait segments, with mouth opening and eye closure.

Every frame's landmarks come from a face found on that frame: MTCNN on the work image (512² by
default), searched first in a window twice the size of the last face (cheap), over the whole
frame when the face is not there; dlib's 68-point predictor then runs in the box convention it
was trained on (`crop.dlib_box`). Nothing carries over between frames but where to look first,
so an error cannot feed itself (the earlier tracker took each box from the previous frame's
landmarks and drifted off moving faces). A frame without a face is NaN with confidence 0, never
a copy of its neighbour. Confidence = MTCNN's probability × how well the 68 points fill the box
they were found in (their bounds' IoU with the box: 0.70–0.80 on real faces, 0.28–0.46 when the
points sit half a face away, so it falls to 0 below 0.45). Mouth opening = inner-lip gap /
inter-ocular distance; eye closure per eye = 1 − eye aspect ratio / its open-eye level
(Soukupová & Čech's EAR, normalised by the segment's 90th percentile).
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np

from singinghead.features.face import eye_closure
from singinghead.tasks.crop import choose_face, dlib_box, face_analyser

CROP_DETECT_WIDTH = 256  # MTCNN input width of the search window (the face fills about half of it)


@dataclass(frozen=True)
class DenseLandmarks:
    landmarks: np.ndarray  # (T, 68, 2) portrait pixels
    confidence: np.ndarray  # (T,) 0..1
    mouth_opening: np.ndarray  # (T,) inner-lip gap / inter-ocular distance
    eye_closure: np.ndarray  # (T, 2) left, right: 0 open … 1 closed


def mouth_opening(lmk: np.ndarray) -> np.ndarray:
    """Inner-lip gap (points 61–63 vs 67–65) over the inter-ocular distance (eye centres)."""
    gap = np.linalg.norm(lmk[..., [61, 62, 63], :] - lmk[..., [67, 66, 65], :], axis=-1).mean(axis=-1)
    iod = np.linalg.norm(lmk[..., 36:42, :].mean(axis=-2) - lmk[..., 42:48, :].mean(axis=-2), axis=-1)
    return gap / np.maximum(iod, 1e-6)


IOU_GOOD, IOU_BAD = 0.70, 0.45


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = np.maximum(a[:2], b[:2])
    x1, y1 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def agreement(lmk: np.ndarray, mtcnn_box: np.ndarray) -> float:
    """0..1: how well 68 points fill the dlib box of the detection they were found in."""
    bounds = np.concatenate([lmk.min(axis=0), lmk.max(axis=0)])
    return float(np.clip((_iou(bounds, dlib_box(mtcnn_box)) - IOU_BAD) / (IOU_GOOD - IOU_BAD), 0.0, 1.0))


def find_face(analyser, image: np.ndarray, last: np.ndarray | None, min_score: float
              ) -> tuple[np.ndarray, float] | None:
    """The subject's face box on this image and MTCNN's probability: near the last face when it is
    still there, else over the whole image (largest, most central confident face)."""
    h, w = image.shape[:2]
    if last is not None:
        side = 2.0 * max(last[2] - last[0], last[3] - last[1])
        cx, cy = (last[0] + last[2]) / 2, (last[1] + last[3]) / 2
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
        boxes, probs = analyser.detect(np.ascontiguousarray(image[y0:y1, x0:x1]), width=CROP_DETECT_WIDTH)
        ok = np.flatnonzero(probs >= min_score)
        if len(ok):
            areas = (boxes[ok, 2] - boxes[ok, 0]) * (boxes[ok, 3] - boxes[ok, 1])
            i = ok[int(np.argmax(areas))]
            box = boxes[i] + [x0, y0, x0, y0]
            # A face cut by the window's border (it moved fast) gets a truncated box: look again
            # over the whole image. The image's own border does not count.
            margin = 0.02 * side
            cut = ((box[0] < x0 + margin and x0 > 0) or (box[1] < y0 + margin and y0 > 0)
                   or (box[2] > x1 - margin and x1 < w) or (box[3] > y1 - margin and y1 < h))
            if not cut:
                return box, float(probs[i])
    boxes, probs = analyser.detect(image)
    i = choose_face(boxes, probs, w, h, min_score)
    return None if i is None else (boxes[i], float(probs[i]))


def dense_landmarks(video: str, work_size: int = 512, device: str = "auto", min_score: float = 0.9
                    ) -> DenseLandmarks:
    analyser = face_analyser(device)
    out, conf = [], []
    last = None
    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            img = frame.to_ndarray(format="rgb24")
            scale = work_size / img.shape[1]
            small = cv2.resize(img, (work_size, round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            found = find_face(analyser, small, last, min_score)
            if found is None:
                out.append(np.full((68, 2), np.nan))
                conf.append(0.0)
                last = None
                continue
            box, prob = found
            lmk = analyser.landmarks(small, box)
            out.append(lmk / scale)
            conf.append(prob * agreement(lmk, box))
            last = box
    lmk = np.asarray(out)
    return DenseLandmarks(lmk, np.asarray(conf), mouth_opening(lmk), eye_closure(lmk))
