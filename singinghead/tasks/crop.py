"""Face cropping and serialisation: 4K capture → 1024² portrait segments (SPEC §2.1).

Analysis pass (reduced resolution, every `check_every` frames only; MJPEG frames in between are
never decoded):
- no open segment: MTCNN on the whole frame. Several faces → keep the largest (ties: the most
  central) and report the frame. The crop is a square of `box_scale` × the face box's larger
  side, centred on the face (shifted up by `box_shift_up` of its height for hair), moved inside
  the frame.
- open segment: MTCNN inside the crop, then dlib's 68 landmarks in the face box. The segment is
  cut when the face is lost (no face above `min_score`), when an edge landmark (jaw contour and
  brows, points 0–26) comes closer than `border_margin` × side to the crop border, or when a
  frame cannot be decoded. A segment spans its first to its last checked-good frame; at a border
  cut a new segment starts at once on the same frame with a freshly detected box.
- segments shorter than `min_seconds` are dropped and counted.

Serialisation: one ffmpeg per segment on the original file (exact input seek on MJPEG, crop +
scale filter, libx264 yuv420p, an IDR frame at every 240th frame where release windows start),
segments of a take encoded in parallel. No pixel loop in Python.

Then every portrait frame gets its own 68 landmarks (tasks.landmarks, one NPZ beside each
segment): they belong to the portrait video, so the audio step's sync and the FLAME fits read
them, and a re-run of either (another mic, other sync weights) does not detect the faces again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.errors import SingingHeadError
from singinghead.schemas.release import WINDOW_FRAMES
from singinghead.schemas.segments import SEGMENT_SCHEMA, CropSummary, Cut, DroppedSequence
from singinghead.schemas.settings import get_settings
from singinghead.storage import files
from singinghead.storage.assets import ffmpeg_exe
from singinghead.storage.catalog import Catalog, cache_key
from singinghead.tasks.landmarks import FaceAnalyser, choose_face, dense_landmarks, face_analyser

STEP = "crop"
# 2: segments end at the device's frame drops; 3: dense landmarks of every portrait frame. Segments
# now open every release window with a keyframe (its packets are copied, not re-encoded), but the
# version stays: an older segment is as good, only its windows are re-encoded instead
# (tasks.windows.cut_video), so a lab's processed sessions are not redone for it.
VERSION = "3"
EDGE_LANDMARKS = np.arange(0, 27)  # jaw contour 0–16, brows 17–26


@dataclass(frozen=True)
class CropParams:
    analysis_scale: int = 2  # MJPEG decoded at 1/2 for analysis (landmarks need the detail)
    check_every: int = 6  # frames between checks (paper: landmarks every 6 frames)
    detect_width: int = 640  # MTCNN input width for whole-frame detection
    crop_detect_width: int = 256  # MTCNN input width inside the crop
    box_scale: float = 2.0  # crop side / larger side of the face box
    box_shift_up: float = 0.1
    border_margin: float = 0.06  # × crop side
    min_score: float = 0.9  # MTCNN probability for a face
    min_seconds: float = 3.0
    output_size: int = 1024
    crf: int = 18
    preset: str = "veryfast"
    encode_workers: int = 2
    device: str = "auto"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_settings(cls) -> CropParams:
        """The defaults with the settings' choices (crop_min_seconds): read where the flow runs."""
        return cls(min_seconds=get_settings().crop_min_seconds)


@dataclass
class Segment:
    frame_start: int
    box: tuple[int, int, int]  # x0, y0, side in source px
    score: float
    last_good: int = -1
    min_score: float = 1.0
    faces_max: int = 1
    end_reason: str = "end of take"
    landmark_frames: list[int] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)  # (68, 2) source px each


def crop_box(face: np.ndarray, width: int, height: int, p: CropParams) -> tuple[int, int, int]:
    """Square crop (x0, y0, side) around a face box, inside a width × height frame."""
    w, h = face[2] - face[0], face[3] - face[1]
    side = int(round(min(max(w, h) * p.box_scale, width, height)))
    side -= side % 2
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2 - p.box_shift_up * h
    x0 = int(round(np.clip(cx - side / 2, 0, width - side)))
    y0 = int(round(np.clip(cy - side / 2, 0, height - side)))
    return x0, y0, side


def border_distance(points: np.ndarray, box: tuple[int, int, int]) -> float:
    """Smallest distance (px) of points to the crop border; negative when outside."""
    x0, y0, side = box
    d = np.minimum.reduce([points[:, 0] - x0, x0 + side - points[:, 0], points[:, 1] - y0, y0 + side - points[:, 1]])
    return float(d.min())


def analyse_take(video: str | Path, p: CropParams, analyser: FaceAnalyser | None = None
                 ) -> tuple[list[Segment], CropSummary, np.ndarray]:
    """Find the segments of a take. Returns (kept segments, summary, per-frame timestamps).
    A segment never spans a frame drop of the device: within a segment, frame k is k frame
    periods after its first frame, which is what its audio cut, motion and windows rely on."""
    analyser = analyser or face_analyser(p.device)
    with KinectRecording(video) as rec:
        timestamps = rec.timestamps()
        probe = rec.probe(timestamps)
        width, height, fps = rec.width, rec.height, probe.fps
        drops = {d.frame: d for d in probe.frame_drops}
        take_id = Path(video).parent.name
        summary = CropSummary(take_id=take_id, frames=len(timestamps), segments_kept=0, segments_dropped=0,
                              seconds_kept=0.0)
        s = p.analysis_scale
        segments: list[Segment] = []
        current: Segment | None = None

        def close(seg: Segment, frame: int, reason: str) -> None:
            seg.end_reason = reason
            summary.cuts.append(Cut(frame=frame, time_s=float(timestamps[min(frame, len(timestamps) - 1)]),
                                    reason=reason))
            segments.append(seg)

        def open_segment(idx: int, img: np.ndarray) -> Segment | None:
            scale = min(1.0, p.detect_width / img.shape[1])
            small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
            boxes, probs = analyser.detect(small)
            boxes = boxes / scale * s
            chosen = choose_face(boxes, probs, width, height, p.min_score)
            if chosen is None:
                summary.frames_without_face.append(idx)
                return None
            n_faces = int((probs >= p.min_score).sum())
            if n_faces > 1:
                summary.frames_with_several_faces.append(idx)
            seg = Segment(frame_start=idx, box=crop_box(boxes[chosen], width, height, p), score=float(probs[chosen]))
            seg.faces_max = n_faces
            return seg

        def check(seg: Segment, img: np.ndarray):
            """MTCNN inside the crop, dlib landmarks on the (largest) face: (lmk, prob, n) or None."""
            x0, y0, side = (v // s for v in seg.box)
            crop = np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side])
            boxes, probs = analyser.detect(crop, width=p.crop_detect_width)
            faces = np.flatnonzero(probs >= p.min_score)
            if len(faces) == 0:
                return None
            areas = (boxes[faces, 2] - boxes[faces, 0]) * (boxes[faces, 3] - boxes[faces, 1])
            face = faces[int(np.argmax(areas))]
            lmk = (analyser.landmarks(crop, boxes[face]) + [x0, y0]) * s
            return lmk, float(probs[face]), len(faces)

        for idx, _, img in rec.frames(scale=s, step=p.check_every, skip_corrupt=True):
            gap = None if current is None else next(
                (f for f in drops if current.frame_start < f <= idx), None)
            if gap is not None:  # the device lost frames since the last check: end the segment there
                close(current, gap, f"{drops[gap].missing} frames dropped before frame {gap} "
                                    f"({drops[gap].gap_s * 1000:.0f} ms gap)")
                current = None
            if img is None:
                summary.corrupt_frames.append(idx)
                if current is not None:
                    close(current, idx, f"frame {idx} cannot be decoded")
                    current = None
                continue
            if current is None:
                current = open_segment(idx, img)
                if current is None:
                    continue
            found = check(current, img)
            if found is None:
                summary.frames_without_face.append(idx)
                close(current, idx, f"face lost at frame {idx}")
                current = None
                continue
            if border_distance(found[0][EDGE_LANDMARKS], current.box) < p.border_margin * current.box[2]:
                close(current, idx, f"face near the crop border at frame {idx}")
                current = open_segment(idx, img)
                found = check(current, img) if current is not None else None
                if found is None:
                    current = None
                    continue
            lmk, prob, n_faces = found
            if n_faces > 1:
                summary.frames_with_several_faces.append(idx)
            current.faces_max = max(current.faces_max, n_faces)
            current.min_score = min(current.min_score, prob)
            current.last_good = idx
            current.landmark_frames.append(idx)
            current.landmarks.append(lmk)
        if current is not None:
            close(current, len(timestamps), "end of take")

    kept = []
    for seg in segments:
        if seg.last_good < seg.frame_start:
            continue
        n = seg.last_good + 1 - seg.frame_start
        if n / fps < p.min_seconds:
            summary.dropped.append(DroppedSequence(frame_start=seg.frame_start, frame_end=seg.last_good + 1,
                                                   seconds=n / fps, reason=f"shorter than {p.min_seconds:g} s"))
        else:
            kept.append(seg)
    summary.segments_kept, summary.segments_dropped = len(kept), len(summary.dropped)
    summary.seconds_kept = float(sum((k.last_good + 1 - k.frame_start) / fps for k in kept))
    if summary.frames_with_several_faces:
        summary.warnings.append(
            f"several faces in {len(summary.frames_with_several_faces)} checked frames "
            f"(first: {summary.frames_with_several_faces[0]}); kept the largest, most central face")
    if summary.corrupt_frames:
        summary.warnings.append(f"{Path(video).name}: frames {summary.corrupt_frames} cannot be decoded")
    if drops:
        summary.warnings.append(f"the device dropped {probe.dropped_frames} frames in {len(drops)} gaps; "
                                "segments end at each gap")
    return kept, summary, timestamps


def encode_segment(video: str | Path, seg: Segment, timestamps: np.ndarray, out_path: str, p: CropParams,
                   threads: int, publish_as: str | None = None) -> None:
    """ffmpeg: exact input seek to the segment's first frame, crop + scale, libx264. Errors name
    the output (`publish_as`, where the temporary file will be published) and the input."""
    n = seg.last_good + 1 - seg.frame_start
    x0, y0, side = seg.box
    fps_step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 1 / 30
    start = max(float(timestamps[seg.frame_start]) - fps_step / 2, 0.0)
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-threads", str(threads),
        "-ss", f"{start:.6f}", "-i", str(video), "-map", "0:v:0", "-frames:v", str(n),
        # MJPEG is full range; the portrait is the usual limited-range yuv420p.
        "-vf", f"crop={side}:{side}:{x0}:{y0},"
               f"scale={p.output_size}:{p.output_size}:flags=bicubic:out_range=tv,format=yuv420p",
        "-c:v", "libx264", "-preset", p.preset, "-crf", str(p.crf), "-threads", str(threads),
        # An IDR frame opens every release window (frames 240 k): windows copy their packets.
        "-force_key_frames", f"expr:eq(mod(n,{WINDOW_FRAMES}),0)", "-forced-idr", "1",
        "-fps_mode", "passthrough", "-an", "-movflags", "+faststart", "-f", "mp4", out_path,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = proc.stderr.strip()[-500:] or (
            f"ffmpeg was killed by {signal.Signals(-proc.returncode).name} ({signal.strsignal(-proc.returncode)})"
            if proc.returncode < 0 else f"ffmpeg exited with {proc.returncode}")
        raise SingingHeadError(f"{publish_as or out_path}: encoding frames {seg.frame_start}–{seg.last_good} of "
                               f"{video} failed: {why}")
    with av.open(out_path) as c:
        got = sum(1 for pkt in c.demux(c.streams.video[0]) if pkt.size)
    if got != n:
        raise SingingHeadError(f"{video}: segment at frame {seg.frame_start} has {got} frames, expected {n}")


def _segment_rows(take_id: str, kept: list[Segment], timestamps: np.ndarray, p: CropParams,
                  names: list[str], digests: list[str]) -> pa.Table:
    rows = []
    for i, seg in enumerate(kept):
        x0, y0, side = seg.box
        lmk = np.stack(seg.landmarks)
        portrait = (lmk - [x0, y0]) * (p.output_size / side)
        end = seg.last_good + 1
        rows.append({
            "take_id": take_id, "segment_index": i, "frame_start": seg.frame_start, "frame_end": end,
            "n_frames": end - seg.frame_start, "t_start_s": float(timestamps[seg.frame_start]),
            "t_end_s": float(timestamps[end - 1]), "timestamps_s": timestamps[seg.frame_start:end].tolist(),
            "crop_x0": x0, "crop_y0": y0, "crop_side": side, "output_size": p.output_size,
            "detector_score": seg.score, "min_detector_score": seg.min_score, "faces_max": seg.faces_max,
            "landmark_frames": seg.landmark_frames,
            "landmarks_source": lmk.reshape(len(lmk), -1).astype(np.float32).tolist(),
            "landmarks_portrait": portrait.reshape(len(lmk), -1).astype(np.float32).tolist(),
            "end_reason": seg.end_reason, "video": names[i], "video_sha256": digests[i],
        })
    return pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)


def crop_take(video: str | Path, take_id: str, out_dir: str, p: CropParams) -> list[ArtifactRef]:
    """Analyse and serialise one take into `out_dir`: segment MP4s, segments.parquet, summary.json."""
    kept, summary, timestamps = analyse_take(video, p)
    summary.take_id = take_id
    names = [f"{take_id}_seg{i:03d}.mp4" for i in range(len(kept))]
    workers = max(1, min(p.encode_workers, len(kept)))
    threads = max(1, (os.cpu_count() or 2) // workers)
    refs: list[ArtifactRef] = []

    def encode(i: int) -> ArtifactRef:
        url = files.join(out_dir, names[i])
        with files.atomic_output(url) as tmp:
            encode_segment(video, kept[i], timestamps, tmp, p, threads, publish_as=url)
        return files.artifact_ref(url, kind="portrait_video", segment_index=i)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        refs = list(pool.map(encode, range(len(kept))))
    table = _segment_rows(take_id, kept, timestamps, p, names, [r.sha256 for r in refs])
    table_url = files.join(out_dir, "segments.parquet")
    with files.atomic_output(table_url) as tmp:
        pq.write_table(table, tmp)
    refs.append(files.artifact_ref(table_url, kind="segments"))
    refs.append(files.write_json_atomic(files.join(out_dir, "summary.json"), summary.model_dump(mode="json")))
    refs[-1].meta = {"kind": "crop_summary"}
    return refs


def segment_landmarks(refs: list[ArtifactRef], out_dir: str, device: str = "auto") -> list[ArtifactRef]:
    """Dense landmarks of every portrait segment in `refs`: `<segment>_landmarks.npz` beside it."""
    out = []
    for ref in refs:
        if ref.meta.get("kind") != "portrait_video":
            continue
        with files.local_path(ref.url) as video:
            dense = dense_landmarks(video, device=device)
        url = files.join(out_dir, ref.url.rsplit("/", 1)[-1].replace(".mp4", "_landmarks.npz"))
        with files.atomic_output(url) as tmp:
            np.savez_compressed(tmp, landmarks=dense.landmarks.astype(np.float32), confidence=dense.confidence,
                                mouth_opening=dense.mouth_opening, eye_closure=dense.eye_closure)
        out.append(files.artifact_ref(url, kind="dense_landmarks", segment_index=ref.meta["segment_index"]))
    return out


def _catalog_params(p: CropParams) -> dict:
    """Parameters that change the output (not how many encoders run, nor the device)."""
    return {k: v for k, v in p.as_dict().items() if k not in ("encode_workers", "device")}


def done_outputs(out: str, video_sha256: str, params: CropParams | None = None) -> list[ArtifactRef] | None:
    """The artifacts of an identical earlier crop, if the catalog has them intact."""
    done = Catalog(out).lookup(STEP, VERSION, _catalog_params(params or CropParams()), {"video": video_sha256})
    return done.outputs if done is not None else None


def crop_for_take(session_dir: str, session_id: str, take_id: str, video_rel: str, video_sha256: str, out: str,
                  params: CropParams | None = None) -> list[ArtifactRef]:
    """Catalog-aware crop of one take: portrait segments and their dense landmarks (skips when done
    with the same video, version and params)."""
    p = params or CropParams()
    catalog = Catalog(out)
    inputs = {"video": video_sha256}
    settings = _catalog_params(p)
    done = catalog.lookup(STEP, VERSION, settings, inputs)
    if done is not None:
        return done.outputs
    key = cache_key(STEP, VERSION, settings, inputs)
    out_dir = files.join(out, "sessions", session_id, "takes", take_id, STEP, key[:16])
    refs = crop_take(Path(session_dir) / video_rel, take_id, out_dir, p)
    refs += segment_landmarks(refs, out_dir, p.device)
    catalog.record(STEP, VERSION, settings, inputs, refs, meta={"session_id": session_id, "take_id": take_id})
    return refs


@task(name="crop-take", task_run_name="crop-{take_id}", retries=1, retry_delay_seconds=2)
def crop_take_task(session_dir: str, session_id: str, take_id: str, video_rel: str, video_sha256: str,
                   out: str, params: CropParams) -> list[ArtifactRef]:
    return crop_for_take(session_dir, session_id, take_id, video_rel, video_sha256, out, params)


def read_summary(refs: list[ArtifactRef]) -> CropSummary:
    ref = next(r for r in refs if r.meta.get("kind") == "crop_summary")
    return CropSummary.model_validate(json.loads(files.read_bytes(ref.url)))
