"""Faces and their 68 landmarks: MTCNN boxes, dlib's predictor in the box convention it was
trained on, and the dense per-frame landmarks of portrait segments (the crop step's, read by the
audio step's sync and the FLAME fits), with mouth opening and eye closure.

Every frame's landmarks come from a face found on that frame: MTCNN on the work image (512² by
default), searched first in a window twice the size of the last face (cheap), over the whole
frame when the face is not there; dlib's 68-point predictor then runs in the box convention it
was trained on (`dlib_box`). Nothing carries over between frames but where to look first,
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
from singinghead.schemas.settings import channels_last, torch_device
from singinghead.storage.assets import dlib_landmark_model

#: dlib's 68-point predictor was trained on the boxes of dlib's HOG face detector; MTCNN places
#: its boxes differently (taller, higher on the face). Measured on the real talking clips (every
#: 6th frame of five people where both detectors found one face, 120 frames; re-measured by
#: tests/test_face_track.py): the HOG box keeps MTCNN's centre x, its centre sits 4.5 % of the
#: MTCNN height lower, and it is 1.08 × as wide and 0.78 × as tall (per-clip spread ≈ 0.05).
DLIB_BOX_FROM_MTCNN = {"dx": 0.0, "dy": 0.045, "width": 1.08, "height": 0.78}


#: The same box from dlib's own 68 points (their bounds; measured likewise: centre x kept, centre
#: 10.3 % of their height higher, 1.10 × their width, 1.02 × their height).
DLIB_BOX_FROM_LANDMARKS = {"dx": 0.0, "dy": -0.103, "width": 1.10, "height": 1.02}


def _scaled_box(x0: float, y0: float, x1: float, y1: float, m: dict) -> np.ndarray:
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + m["dx"] * w, (y0 + y1) / 2 + m["dy"] * h
    hw, hh = m["width"] * w / 2, m["height"] * h / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def dlib_box(mtcnn_box: np.ndarray) -> np.ndarray:
    """The box dlib's predictor expects for a face MTCNN found (x0, y0, x1, y1)."""
    return _scaled_box(*np.asarray(mtcnn_box, dtype=np.float64)[:4], DLIB_BOX_FROM_MTCNN)


def dlib_box_of_landmarks(lmk: np.ndarray) -> np.ndarray:
    """The box dlib's predictor expects for a face whose 68 points are `lmk`."""
    return _scaled_box(*lmk.min(axis=0), *lmk.max(axis=0), DLIB_BOX_FROM_LANDMARKS)


class FaceAnalyser:
    """MTCNN for face boxes, dlib for 68 landmarks. Built once per worker process."""

    def __init__(self, device: str = "auto"):
        import dlib
        from facenet_pytorch import MTCNN

        device = torch_device(None if device == "auto" else device)  # auto: SINGINGHEAD_DEVICE
        # Whole frames: faces from 40 px up. Crops: the face fills about half the crop, so a
        # 256 px input with 64 px minimum faces keeps MTCNN's image pyramid to three levels.
        # Channels-last weights: R- and O-Net's 3×3 max-pools are ≈ 10× faster (bench/face_detect.py).
        self.mtcnn = channels_last(MTCNN(keep_all=True, device=device, post_process=False, min_face_size=40))
        self.mtcnn_crop = channels_last(MTCNN(keep_all=True, device=device, post_process=False, min_face_size=64))
        self.predictor = dlib.shape_predictor(dlib_landmark_model())
        self._dlib = dlib

    def detect(self, rgb: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Face boxes (N, 4: x0, y0, x1, y1) and probabilities (N,) in `rgb`'s pixels.

        With `width`, the image is first shrunk to that width (crop mode, faster pyramid).
        """
        scale = min(1.0, width / rgb.shape[1]) if width else 1.0
        small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        boxes, probs = (self.mtcnn_crop if width else self.mtcnn).detect(small)
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0)
        return np.asarray(boxes, dtype=np.float64) / scale, np.asarray(probs, dtype=np.float64)

    def landmarks(self, rgb: np.ndarray, mtcnn_box: np.ndarray) -> np.ndarray:
        """dlib's 68 points (x, y) for a face MTCNN found, in the box convention dlib was trained on;
        then once more in the box those points imply (on this frame only: an odd MTCNN box, e.g.
        one that takes in the hair, is corrected; a good one gives the same points)."""
        lmk = self._predict(rgb, dlib_box(mtcnn_box))
        return self._predict(rgb, dlib_box_of_landmarks(lmk))

    def _predict(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        shape = self.predictor(rgb, self._dlib.rectangle(*(int(round(v)) for v in box)))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


_ANALYSERS: dict[str, FaceAnalyser] = {}


def face_analyser(device: str = "auto") -> FaceAnalyser:
    if device not in _ANALYSERS:
        _ANALYSERS[device] = FaceAnalyser(device)
    return _ANALYSERS[device]


def choose_face(boxes: np.ndarray, probs: np.ndarray, width: int, height: int, min_score: float) -> int | None:
    """Index of the subject's face: the largest confident box; ties go to the most central."""
    keep = np.flatnonzero(probs >= min_score)
    if len(keep) == 0:
        return None
    areas = (boxes[keep, 2] - boxes[keep, 0]) * (boxes[keep, 3] - boxes[keep, 1])
    centres = (boxes[keep, :2] + boxes[keep, 2:]) / 2
    off_centre = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2)
    order = np.lexsort((off_centre, -np.round(areas / areas.max(), 2)))
    return int(keep[order[0]])


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
