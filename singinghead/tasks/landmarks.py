"""Dense per-frame 68-point landmarks on portrait segments, with mouth opening and eye closure.

dlib's 68-point predictor runs on every frame of a 1024² portrait (at `work_size`, 512 by
default). The face box of a frame is the previous frame's landmark bounds (tracking); when that
fails (first frame, low confidence) MTCNN detects it again. Confidence per frame is how well
the frame's shape agrees with the face box that produced it (detected faces score MTCNN's
probability; tracked faces score 1 − the normalised shift of the box). Mouth opening = inner-lip
gap / inter-ocular distance; eye closure per eye = 1 − eye aspect ratio / its open-eye level
(Soukupová & Čech's EAR, normalised by the segment's 90th percentile).
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np

from singinghead.tasks.crop import face_analyser


@dataclass(frozen=True)
class DenseLandmarks:
    landmarks: np.ndarray  # (T, 68, 2) portrait pixels
    confidence: np.ndarray  # (T,) 0..1
    mouth_opening: np.ndarray  # (T,) inner-lip gap / inter-ocular distance
    eye_closure: np.ndarray  # (T, 2) left, right: 0 open … 1 closed


def eye_aspect_ratio(eye: np.ndarray) -> np.ndarray:
    """EAR of (…, 6, 2) eye contours (dlib order)."""
    v = np.linalg.norm(eye[..., 1, :] - eye[..., 5, :], axis=-1) + np.linalg.norm(eye[..., 2, :] - eye[..., 4, :],
                                                                                    axis=-1)
    h = np.linalg.norm(eye[..., 0, :] - eye[..., 3, :], axis=-1)
    return v / (2.0 * np.maximum(h, 1e-6))


def mouth_opening(lmk: np.ndarray) -> np.ndarray:
    """Inner-lip gap (points 61–63 vs 67–65) over the inter-ocular distance (eye centres)."""
    gap = np.linalg.norm(lmk[..., [61, 62, 63], :] - lmk[..., [67, 66, 65], :], axis=-1).mean(axis=-1)
    iod = np.linalg.norm(lmk[..., 36:42, :].mean(axis=-2) - lmk[..., 42:48, :].mean(axis=-2), axis=-1)
    return gap / np.maximum(iod, 1e-6)


def dense_landmarks(video: str, work_size: int = 512, device: str = "auto", min_score: float = 0.9
                    ) -> DenseLandmarks:
    analyser = face_analyser(device)
    out, conf = [], []
    box = None
    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            img = frame.to_ndarray(format="rgb24")
            scale = work_size / img.shape[1]
            small = cv2.resize(img, (work_size, work_size), interpolation=cv2.INTER_AREA)
            score = 0.0
            if box is not None:
                lmk = analyser.landmarks(small, box)
                new_box = _box_of(lmk)
                shift = np.abs(new_box - box).max() / max(box[2] - box[0], 1.0)
                score = float(np.clip(1.0 - 2.0 * shift, 0.0, 1.0))
                box = new_box
            if box is None or score < 0.5:
                boxes, probs = analyser.detect(small)
                if len(probs) and probs.max() >= min_score:
                    box = boxes[int(np.argmax(probs))]
                    lmk = analyser.landmarks(small, box)
                    score = float(probs.max())
                    box = _box_of(lmk)
                elif box is None:
                    lmk, score = np.full((68, 2), np.nan), 0.0
            out.append(lmk / scale)
            conf.append(score)
    lmk = np.asarray(out)
    ear = np.stack([eye_aspect_ratio(lmk[:, 36:42]), eye_aspect_ratio(lmk[:, 42:48])], axis=1)
    open_level = np.nanpercentile(ear, 90, axis=0) if np.isfinite(ear).any() else np.ones(2)
    closure = np.clip(1.0 - ear / np.maximum(open_level, 1e-6), 0.0, 1.0)
    return DenseLandmarks(lmk, np.asarray(conf), mouth_opening(lmk), closure)


def _box_of(lmk: np.ndarray) -> np.ndarray:
    """A dlib-style face box from landmarks: their bounds, grown at the top for the forehead."""
    x0, y0 = lmk.min(axis=0)
    x1, y1 = lmk.max(axis=0)
    h = y1 - y0
    return np.array([x0, y0 - 0.1 * h, x1, y1])
