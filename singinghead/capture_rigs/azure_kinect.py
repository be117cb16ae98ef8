"""Azure Kinect Matroska recordings: colour track, timestamps, calibration, frames.

The Kinect recorder writes one Matroska file per take: a COLOR track (MJPEG for 4K), optional
DEPTH/IR/IMU tracks, global tags such as K4A_START_OFFSET_NS and a `calibration.json`
attachment. The colour track is found by its `K4A_COLOR_TRACK` tag, never by index. Block
timestamps are relative to the recording start; the device timestamp of a frame is its
timestamp plus K4A_START_OFFSET_NS (Azure Kinect SDK, record file format).

Frames are decoded with PyAV on FFmpeg's threads. MJPEG can be decoded at 1/2, 1/4 or 1/8
resolution directly in the IDCT (FFmpeg's `lowres`), which is what the analysis passes use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from singinghead.schemas.artifacts import FrameDrop, VideoProbe
from singinghead.schemas.errors import InputError

_LOWRES = {1: 0, 2: 1, 4: 2, 8: 3}
_SENSOR = (4096, 3072)  # the colour sensor; calibration parameters are normalised to it
#: A step longer than this many frame periods means the device dropped frames (the Kinect's
#: timestamps jitter by well under a millisecond at 30 fps; one lost frame doubles the step).
DROP_STEP = 1.5


def frame_drops(timestamps: np.ndarray) -> list[FrameDrop]:
    """Where the device dropped frames, read from its timestamps: every step longer than
    DROP_STEP times the median step, with the frames lost in it."""
    if len(timestamps) < 2:
        return []
    steps = np.diff(timestamps)
    median = float(np.median(steps))
    return [FrameDrop(frame=int(i) + 1, missing=max(1, int(round(steps[i] / median)) - 1), gap_s=float(steps[i]))
            for i in np.flatnonzero(steps > DROP_STEP * median)]


def frame_period(timestamps: np.ndarray, drops: list[FrameDrop] | None = None) -> float | None:
    """The device's frame period: the span over the frame slots it covers, dropped ones included
    (not the median step, which a millisecond timebase rounds to 33 or 34 ms)."""
    if len(timestamps) < 2:
        return None
    drops = frame_drops(timestamps) if drops is None else drops
    return float(timestamps[-1] - timestamps[0]) / (len(timestamps) - 1 + sum(d.missing for d in drops))


@dataclass(frozen=True)
class ColorCalibration:
    """Pinhole + Brown–Conrady distortion of the colour camera at the track's resolution.

    `dist` is in OpenCV order (k1, k2, p1, p2, k3, k4, k5, k6); pixel centres at integers.
    """

    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray
    rotation: np.ndarray  # colour camera w.r.t. depth camera, 3×3
    translation_m: np.ndarray


def _segment_size_problem(path: Path) -> str | None:
    """Compare the Matroska Segment size declared in the header with the file's size.

    The recorder finalises the Segment size when it closes the file; a copy cut short (full
    disk, interrupted transfer) has fewer bytes than the header promises.
    """

    def read_vint(buf: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
        first = buf[pos]
        length = 1
        while length <= 8 and not first & (0x80 >> (length - 1)):
            length += 1
        if length > 8:
            raise ValueError("bad EBML varint")
        value = first if keep_marker else first & ((0x80 >> (length - 1)) - 1)
        all_ones = value == (0x80 >> (length - 1)) - 1 and not keep_marker
        for b in buf[pos + 1 : pos + length]:
            value = (value << 8) | b
            all_ones = all_ones and b == 0xFF
        return value, pos + length, all_ones

    with open(path, "rb") as fh:
        head = fh.read(4096)
    try:
        ebml_id, pos, _ = read_vint(head, 0, True)
        if ebml_id != 0x1A45DFA3:
            return "not a Matroska file (no EBML header)"
        ebml_size, pos, _ = read_vint(head, pos, False)
        pos += ebml_size
        seg_id, pos, _ = read_vint(head, pos, True)
        if seg_id != 0x18538067:
            return "not a Matroska file (no Segment after the EBML header)"
        seg_size, pos, unknown = read_vint(head, pos, False)
    except (IndexError, ValueError):
        return "not a Matroska file (unreadable header)"
    actual = path.stat().st_size
    if not unknown and pos + seg_size > actual:
        return (
            f"file is truncated: the Matroska header declares {pos + seg_size} bytes "
            f"but the file has {actual} ({actual / (pos + seg_size):.1%})"
        )
    return None


def _looks_like_jpeg(packet) -> bool:
    """Cheap integrity check of an MJPEG frame without decoding it: SOI first, EOI at the end."""
    data = memoryview(packet)
    return len(data) > 4 and data[0] == 0xFF and data[1] == 0xD8 and b"\xff\xd9" in bytes(data[-16:])


class KinectRecording:
    """Read-only access to one Azure Kinect .mkv take."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "video file not found")
        problem = _segment_size_problem(self.path)
        if problem:
            raise InputError(self.path, problem)
        try:
            self._container = av.open(str(self.path), mode="r")
        except av.error.FFmpegError as exc:
            raise InputError(self.path, f"cannot open as a video container: {exc}") from None
        self.tags = {k: v for k, v in self._container.metadata.items()}
        self.color_stream = self._find_color_stream()
        self.color_mode = self.color_stream.metadata.get("K4A_COLOR_MODE")
        offset = self.tags.get("K4A_START_OFFSET_NS")
        self.start_offset_ns = int(offset) if offset is not None else None
        self.width = self.color_stream.codec_context.width
        self.height = self.color_stream.codec_context.height

    # -- context manager -----------------------------------------------------------------
    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> KinectRecording:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------
    def _find_color_stream(self):
        for stream in self._container.streams.video:
            if "K4A_COLOR_TRACK" in stream.metadata:
                return stream
        names = [s.metadata.get("title", f"#{s.index}") for s in self._container.streams]
        raise InputError(
            self.path, f"no colour track: no video track carries the K4A_COLOR_TRACK tag (tracks: {names})"
        )

    def calibration_json(self) -> dict:
        for stream in self._container.streams:
            if stream.type == "attachment" and getattr(stream, "name", None) == "calibration.json":
                try:
                    return json.loads(bytes(stream.data))
                except (ValueError, TypeError) as exc:
                    raise InputError(self.path, f"calibration.json attachment is not JSON: {exc}") from None
        raise InputError(self.path, "no calibration.json attachment")

    def has_calibration(self) -> bool:
        return any(
            s.type == "attachment" and getattr(s, "name", None) == "calibration.json"
            for s in self._container.streams
        )

    def calibration(self) -> ColorCalibration:
        """Colour intrinsics for this track's resolution.

        The factory JSON normalises cx, cy, fx, fy by the 4096×3072 sensor. 16:9 modes scale the
        sensor to the output width and crop rows symmetrically (as the Azure Kinect SDK does);
        the SDK's half-pixel convention is converted to OpenCV's integer pixel centres.
        """
        cams = self.calibration_json()["CalibrationInformation"]["Cameras"]
        cam = next((c for c in cams if c.get("Location") == "CALIBRATION_CameraLocationPV0"), None)
        if cam is None:
            raise InputError(self.path, "calibration.json has no colour camera (PV0)")
        p = cam["Intrinsics"]["ModelParameters"]
        sw, sh = cam.get("SensorWidth", _SENSOR[0]), cam.get("SensorHeight", _SENSOR[1])
        scale = self.width / sw
        crop_y = (sh * scale - self.height) / 2.0
        cx, cy = p[0] * sw * scale - 0.5, p[1] * sh * scale - crop_y - 0.5
        fx, fy = p[2] * sw * scale, p[3] * sh * scale
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        k1, k2, k3, k4, k5, k6 = p[4:10]
        p2, p1 = p[12], p[13]
        dist = np.array([k1, k2, p1, p2, k3, k4, k5, k6], dtype=np.float64)
        rt = cam["Rt"]
        return ColorCalibration(
            width=self.width, height=self.height, K=K, dist=dist,
            rotation=np.asarray(rt["Rotation"], dtype=np.float64).reshape(3, 3),
            translation_m=np.asarray(rt["Translation"], dtype=np.float64),
        )

    def timestamps(self) -> np.ndarray:
        """Per-frame colour timestamps in seconds (recording clock), from packets only."""
        self._container.seek(0)
        tb = float(self.color_stream.time_base)
        pts = [
            pkt.pts * tb
            for pkt in self._container.demux(self.color_stream)
            if pkt.pts is not None and pkt.size > 0
        ]
        self._container.seek(0)
        if not pts:
            raise InputError(self.path, "colour track has zero frames")
        return np.asarray(pts, dtype=np.float64)

    def probe(self, timestamps: np.ndarray | None = None) -> VideoProbe:
        """Stream facts; pass `timestamps` when already read to avoid a second demux."""
        ts = self.timestamps() if timestamps is None else timestamps
        drops = frame_drops(ts)
        period = frame_period(ts, drops)
        if period:  # the device's rate, whatever frames it dropped
            fps = 1.0 / period
        else:
            rate = self.color_stream.average_rate or self.color_stream.guessed_rate
            fps = float(rate) if rate else 0.0
        duration = float(ts[-1] - ts[0]) + 1.0 / fps if fps else 0.0  # first frame's start to last's end
        return VideoProbe(
            path=str(self.path), codec=self.color_stream.codec_context.name,
            width=self.width, height=self.height, fps=round(fps, 4), frames=len(ts),
            duration_s=duration, first_pts_s=float(ts[0]), start_offset_ns=self.start_offset_ns,
            color_mode=self.color_mode, has_calibration=self.has_calibration(),
            frame_period_s=period, frame_drops=drops,
        )

    # -- frames --------------------------------------------------------------------------
    def frames(
        self, scale: int = 1, start: int = 0, stop: int | None = None, step: int = 1, threads: int = 0,
        skip_corrupt: bool = False,
    ) -> Iterator[tuple[int, float, np.ndarray | None]]:
        """Yield (frame index, timestamp s, RGB uint8 H×W×3) for frames start:stop:step.

        `scale` 2/4/8 decodes MJPEG at reduced resolution inside the decoder. Frames are
        streamed; memory stays at a few frames whatever the take's length. With `skip_corrupt`
        a frame that cannot be decoded is yielded as None (so callers can report its number)
        instead of raising; decoding is then sliced, not frame-threaded, so errors map to frames,
        and every MJPEG frame, even one not asked for, is checked for its JPEG start and end
        markers, so a damaged stretch is reported whatever the step.
        """
        if scale not in _LOWRES:
            raise ValueError(f"scale must be one of {sorted(_LOWRES)}")
        with av.open(str(self.path), mode="r") as container:
            stream = container.streams[self.color_stream.index]
            ctx = stream.codec_context
            if _LOWRES[scale]:
                if ctx.name != "mjpeg":
                    raise InputError(self.path, f"reduced-resolution decode needs MJPEG, track is {ctx.name}")
                ctx.options = {"lowres": str(_LOWRES[scale])}
            ctx.thread_type = "SLICE" if skip_corrupt else "FRAME"
            ctx.thread_count = threads
            tb = float(stream.time_base)
            intra_only = ctx.name == "mjpeg"
            index_of_pts: dict[int, int] = {}
            index = -1
            try:
                for packet in container.demux(stream):
                    if packet.pts is None or packet.size == 0:
                        continue
                    index += 1
                    if stop is not None and index >= stop:
                        break
                    wanted = index >= start and (index - start) % step == 0
                    if skip_corrupt and intra_only and not _looks_like_jpeg(packet):
                        index_of_pts.pop(packet.pts, None)
                        yield index, packet.pts * tb, None  # truncated or overwritten frame
                        continue
                    if not wanted and intra_only:
                        continue  # MJPEG frames are independent: skipped ones are never decoded
                    if wanted:
                        index_of_pts[packet.pts] = index
                    if skip_corrupt:
                        try:
                            decoded = packet.decode()
                        except av.error.FFmpegError:
                            decoded = []
                        if wanted and not decoded:
                            yield index_of_pts.pop(packet.pts), packet.pts * tb, None
                            continue
                    else:
                        decoded = packet.decode()
                    for frame in decoded:
                        if frame.pts in index_of_pts:
                            yield index_of_pts.pop(frame.pts), frame.pts * tb, frame.to_ndarray(format="rgb24")
                for frame in ctx.decode(None):  # drain the threaded decoder
                    if frame.pts in index_of_pts:
                        yield index_of_pts.pop(frame.pts), frame.pts * tb, frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as exc:
                raise InputError(self.path, f"cannot decode colour frame {index}: {exc}") from None
