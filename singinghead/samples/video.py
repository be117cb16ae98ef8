"""A real face photo animated on a 4K Kinect-like MJPEG Matroska recording.

The subject is scikit-image's public-domain astronaut photo (Eileen Collins), head and
shoulders. Per frame it is moved by a known similarity transform (sway, roll, scale, and
sudden leans large enough that a fixed crop box must be cut) and its jaw is opened by a known
displacement field driven by the singing envelope. Each frame is JPEG-encoded and muxed
into MJPEG Matroska with K4A tags and a `calibration.json` attachment, like the Azure Kinect
recorder. Memory stays at a few frames whatever the duration.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data

from singinghead.schemas.errors import SingingHeadError

WIDTH, HEIGHT, FPS = 3840, 2160, 30
#: Azure Kinect colour modes (MJPEG) the sample can record: 4K, and 720p for load tests, which
#: need many sessions rather than many pixels. Both are the same 16:9 crop of the sensor.
COLOR_MODES = {"2160P": (3840, 2160), "720P": (1280, 720)}
SOURCE_ROWS = 330  # head and shoulders; lower rows hold a mission badge dlib mistakes for a face
#: dlib's 68 landmarks on the astronaut photo (shape_predictor_68, detected once), source px.
SOURCE_LANDMARKS = np.array(
    [[179, 104], [180, 116], [181, 127], [182, 139], [185, 150], [191, 160], [200, 168], [209, 176],
     [220, 178], [232, 177], [243, 171], [253, 163], [260, 154], [265, 143], [268, 131], [270, 120],
     [272, 108], [186, 94], [192, 88], [200, 87], [208, 89], [216, 92], [236, 93], [244, 91], [252, 91],
     [260, 92], [265, 99], [226, 102], [225, 111], [225, 119], [225, 127], [214, 131], [219, 133],
     [224, 134], [229, 133], [234, 132], [195, 101], [200, 98], [207, 98], [212, 104], [206, 104],
     [199, 104], [237, 106], [243, 100], [250, 100], [255, 105], [250, 107], [244, 107], [201, 139],
     [209, 139], [218, 139], [224, 141], [230, 140], [238, 140], [246, 141], [238, 151], [229, 155],
     [222, 156], [216, 155], [208, 150], [204, 141], [218, 143], [223, 144], [230, 143], [243, 142],
     [229, 150], [223, 151], [217, 150]],
    dtype=np.float64,
)
FACE_CENTRE = np.array([224.0, 125.0])  # source px, between eyes and mouth
LIP_LINE_Y = 146.5  # source px: rows below open with the jaw
MOUTH_HALF_WIDTH = 22.0  # source px, lip corner to centre
CHIN_Y = 178.0
MAX_JAW_PX = 20.0  # source px at full opening (≈ 90 px on the 4K canvas)


@dataclass(frozen=True)
class HeadMotion:
    """Per-frame similarity of the source photo onto the canvas, plus jaw opening."""

    centre_xy: np.ndarray  # (N, 2) canvas position of FACE_CENTRE
    roll_deg: np.ndarray  # (N,)
    scale: np.ndarray  # (N,)
    jaw_px: np.ndarray  # (N,) source-px jaw drop
    canvas_scale: float = 1.0  # canvas px per 4K px (a lower colour mode sees the same scene)

    def affine(self, i: int) -> np.ndarray:
        """2×3 matrix mapping source px to canvas px for frame i."""
        m = cv2.getRotationMatrix2D(tuple(FACE_CENTRE), float(self.roll_deg[i]), float(self.scale[i]))
        m[:, 2] += self.centre_xy[i] - FACE_CENTRE
        return m * self.canvas_scale


def head_motion(n: int, mouth: np.ndarray, leans: list[tuple[float, float]], rng: np.random.Generator) -> HeadMotion:
    """Smooth sway + roll + breathing scale, and `leans` = [(time s, Δx px)] sudden sideways moves."""
    t = np.arange(n) / FPS
    ph = rng.uniform(0, 2 * np.pi, 5)
    x = 1920 + 60 * np.sin(2 * np.pi * 0.13 * t + ph[0]) + 25 * np.sin(2 * np.pi * 0.41 * t + ph[1])
    y = 980 + 30 * np.sin(2 * np.pi * 0.21 * t + ph[2])
    for when, dx in leans:
        s = np.clip((t - when) / 0.5, 0.0, 1.0)
        x = x + dx * s * s * (3 - 2 * s)  # smoothstep over 0.5 s
    roll = 5.0 * np.sin(2 * np.pi * 0.17 * t + ph[3])
    scale = 4.5 * (1 + 0.04 * np.sin(2 * np.pi * 0.09 * t + ph[4]))
    return HeadMotion(np.stack([x, y], 1), roll, scale, MAX_JAW_PX * np.clip(mouth, 0, 1))


def _jaw_field(xs: np.ndarray, ys: np.ndarray, jaw_px: float) -> np.ndarray:
    """Downward displacement (source px) of points below the lip line when the jaw opens."""
    gx = np.exp(-(((xs - FACE_CENTRE[0]) / 38.0) ** 2))
    rise = np.clip((ys - LIP_LINE_Y) / 3.0, 0.0, 1.0)
    fall = np.clip(1.0 - (ys - CHIN_Y) / 30.0, 0.0, 1.0)
    return jaw_px * gx * rise * fall


def source_image() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[:SOURCE_ROWS])


def open_jaw(src: np.ndarray, jaw_px: float) -> np.ndarray:
    """The photo with its jaw dropped by `jaw_px`, the opened mouth drawn dark. Only the rows from
    the lip line to 30 px below the chin move (the field is 0 elsewhere); the rest is the photo as
    it is, exactly what remapping them by a zero field gives."""
    if jaw_px < 0.05:
        return src
    h, w = src.shape[:2]
    top, bottom = int(np.floor(LIP_LINE_Y)), min(h, int(np.ceil(CHIN_Y + 30.0)) + 1)
    ys, xs = np.mgrid[top:bottom, 0:w].astype(np.float32)
    d = _jaw_field(xs, ys, jaw_px)
    sy = ys - d
    for _ in range(2):  # invert the forward field by fixed-point iteration
        sy = ys - _jaw_field(xs, sy, jaw_px)
    band = cv2.remap(src, xs, sy.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # The opened gap shows as a dark mouth between the lip corners (a lens that narrows with depth).
    depth = np.clip((ys - LIP_LINE_Y) / np.maximum(d, 1e-3), 0.0, 1.0)
    half_width = MOUTH_HALF_WIDTH * np.sqrt(1.0 - depth)
    cavity = (ys >= LIP_LINE_Y) & (sy < LIP_LINE_Y) & (np.abs(xs - FACE_CENTRE[0]) < half_width)
    if cavity.any():
        band[cavity] = (0.25 * band[cavity] + 0.75 * np.array([70, 22, 25])).astype(np.uint8)
    out = src.copy()
    out[top:bottom] = band
    return out


def landmarks(motion: HeadMotion, i: int) -> np.ndarray:
    """Ground-truth 68 landmarks on the canvas for frame i (jaw points follow the jaw)."""
    pts = SOURCE_LANDMARKS.copy()
    pts[:, 1] += _jaw_field(pts[:, 0], pts[:, 1], float(motion.jaw_px[i]))
    return cv2.transform(pts[None], motion.affine(i))[0]


def background(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A studio wall: vertical gradient with soft low-frequency texture (deterministic)."""
    rng = np.random.default_rng(7)
    small = cv2.resize(rng.uniform(-12, 12, (27, 48)).astype(np.float32), (width, height), cv2.INTER_CUBIC)
    grad = np.linspace(70, 40, height, dtype=np.float32)[:, None]
    base = np.clip(grad + small, 0, 255)
    return np.stack([base * 0.95, base, base * 1.08], axis=2).astype(np.uint8)


def render_frame(src: np.ndarray, wall: np.ndarray, motion: HeadMotion, i: int, frame=None) -> np.ndarray:
    """Draw the photo for frame i onto a copy of `wall` (or onto `frame` when given)."""
    frame = wall.copy() if frame is None else frame
    return paste_warped(open_jaw(src, float(motion.jaw_px[i])), motion.affine(i), frame)


def paste_warped(image: np.ndarray, m: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Warp `image` by the 2×3 affine `m` onto `frame` in place (bilinear, the frame shows through
    outside the image). Only the image's bounding box in the frame is computed: a face moved over
    a 4K canvas covers a fraction of it."""
    h, w = image.shape[:2]
    corners = cv2.transform(np.array([[[0, 0], [w, 0], [0, h], [w, h]]], np.float64), m)[0]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int), [frame.shape[1], frame.shape[0]])
    if x1 <= x0 or y1 <= y0:
        return frame
    m_roi = np.array(m, dtype=np.float64)
    m_roi[:, 2] -= [x0, y0]
    cv2.warpAffine(image, m_roi, (x1 - x0, y1 - y0), dst=frame[y0:y1, x0:x1], flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)
    return frame


def kinect_calibration(fx_px: float = 1800.0) -> dict:
    """A factory-style calibration.json whose 3840×2160 colour intrinsics are fx=fy=fx_px,
    principal point at the image centre, no distortion."""
    sw, sh, scale = 4096, 3072, WIDTH / 4096
    crop = (sh * scale - HEIGHT) / 2
    cx_n, cy_n = (WIDTH / 2) / (sw * scale), (HEIGHT / 2 + crop) / (sh * scale)
    params = [cx_n, cy_n, fx_px / (sw * scale), fx_px / (sh * scale)] + [0.0] * 10
    cam = {
        "Intrinsics": {"ModelParameterCount": 14, "ModelParameters": params,
                       "ModelType": "CALIBRATION_LensDistortionModelBrownConrady"},
        "Location": "CALIBRATION_CameraLocationPV0", "Purpose": "CALIBRATION_CameraPurposePhotoVideo",
        "MetricRadius": 0, "SensorHeight": sh, "SensorWidth": sw,
        "Rt": {"Rotation": [1, 0, 0, 0, 1, 0, 0, 0, 1], "Translation": [0, 0, 0]},
    }
    return {"CalibrationInformation": {"Cameras": [cam], "InertialSensors": [], "Metadata": {"SerialId": "sample"}}}


def encode_kinect_mkv(path: Path, frames: Iterable[np.ndarray], start_offset_ns: int, quality: int = 75,
                      track_uid: int = 10**17 + 1, color_mode: str = "2160P", dropped: Sequence[int] = ()) -> None:
    """RGB canvas frames → MJPEG Matroska with K4A tags and the calibration attachment, like the
    Azure Kinect recorder: each frame is a baseline 4:2:2 JPEG (libjpeg-turbo, `quality` 1–100,
    about a third of ffmpeg's mjpeg encoder's CPU) muxed as one packet at its capture time. Memory
    stays at one frame. Frames numbered in `dropped` are left out and the others keep their
    capture times, as when the device drops frames: a gap in the timestamps."""
    width, height = COLOR_MODES[color_mode]
    skip = {int(i) for i in dropped}
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
    try:
        with av.open(str(path), "w", format="matroska", options={"fflags": "+bitexact"}) as out:
            out.metadata.update({"title": "Azure Kinect", "K4A_START_OFFSET_NS": str(start_offset_ns),
                                 "K4A_WIRED_SYNC_MODE": "STANDALONE", "K4A_DEVICE_SERIAL_NUMBER": "000000000000"})
            stream = out.add_mux_stream("mjpeg", rate=FPS, width=width, height=height)
            stream.metadata.update({"title": "COLOR", "K4A_COLOR_TRACK": str(track_uid),
                                    "K4A_COLOR_MODE": f"MJPG_{color_mode}"})
            calib = out.add_attachment("calibration.json", "application/octet-stream",
                                       json.dumps(kinect_calibration(), indent=2).encode())
            calib.metadata["K4A_CALIBRATION_FILE"] = "calibration.json"
            out.start_encoding()  # the header fixes the stream's time base; packets are rebased to it
            for i, frame in enumerate(frames):
                if i in skip:
                    continue
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
                if not ok:
                    raise SingingHeadError(f"{path}: frame {i} could not be JPEG-encoded")
                packet = av.Packet(jpeg.tobytes())
                packet.stream, packet.time_base = stream, Fraction(1, FPS)
                packet.pts = packet.dts = i
                packet.duration, packet.is_keyframe = 1, True
                out.mux(packet)
    except av.FFmpegError as e:
        raise SingingHeadError(f"{path}: could not write the sample recording: {e}") from e


def write_kinect_mkv(
    path: Path, motion: HeadMotion, start_offset_ns: int, quality: int = 75, seed: int = 0,
    hidden: range = range(0), second_person: HeadMotion | None = None, color_mode: str = "2160P",
    dropped: Sequence[int] = (),
) -> None:
    """Render every frame of the photo's motion into a Kinect-like recording (encode_kinect_mkv).

    `hidden` frames show the empty studio (the singer stepped away); `second_person` adds
    another copy of the photo with its own motion (someone else in the shot). The motions'
    `canvas_scale` must match `color_mode`. Frames numbered in `dropped` never reach the file
    (device frame drops; see encode_kinect_mkv).
    """
    src, wall = source_image(), background(*COLOR_MODES[color_mode])

    def frames():
        for i in range(len(motion.scale)):
            frame = wall.copy()
            if second_person is not None:
                render_frame(src, wall, second_person, i, frame)
            if i not in hidden:
                render_frame(src, wall, motion, i, frame)
            yield frame

    encode_kinect_mkv(path, frames(), start_offset_ns, quality, 10**17 + seed * 7919 + 1, color_mode, dropped)
