"""Portrait segments: the Arrow schema of `segments.parquet` and the per-take crop summary."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, Field

LANDMARKS = pa.list_(pa.float32(), 68 * 2)  # x0, y0, x1, y1, … (dlib 68-point order)

SEGMENT_SCHEMA = pa.schema([
    pa.field("take_id", pa.string()),
    pa.field("segment_index", pa.int32()),
    pa.field("frame_start", pa.int32()),  # first source frame (0-based, colour track)
    pa.field("frame_end", pa.int32()),  # one past the last source frame
    pa.field("n_frames", pa.int32()),
    pa.field("t_start_s", pa.float64()),  # source (MKV) timestamp of the first frame
    pa.field("t_end_s", pa.float64()),  # source timestamp of the last frame
    pa.field("timestamps_s", pa.list_(pa.float64())),  # every frame's source timestamp
    pa.field("crop_x0", pa.int32()),  # square crop box in source pixels
    pa.field("crop_y0", pa.int32()),
    pa.field("crop_side", pa.int32()),
    pa.field("output_size", pa.int32()),
    pa.field("detector_score", pa.float32()),  # MTCNN probability of the face that opened the segment
    pa.field("min_detector_score", pa.float32()),  # lowest probability over the checked frames
    pa.field("faces_max", pa.int8()),  # most faces seen at once in the crop (>1: someone else in view)
    pa.field("landmark_frames", pa.list_(pa.int32())),  # source frames with sparse landmarks
    pa.field("landmarks_source", pa.list_(LANDMARKS)),  # source pixels
    pa.field("landmarks_portrait", pa.list_(LANDMARKS)),  # portrait (output_size²) pixels
    pa.field("end_reason", pa.string()),
    pa.field("video", pa.string()),  # MP4 file name beside the table
    pa.field("video_sha256", pa.string()),
])


class Cut(BaseModel):
    frame: int
    time_s: float
    reason: str


class DroppedSequence(BaseModel):
    frame_start: int
    frame_end: int
    seconds: float
    reason: str


class CropSummary(BaseModel):
    take_id: str
    frames: int
    segments_kept: int
    segments_dropped: int
    seconds_kept: float
    cuts: list[Cut] = Field(default_factory=list)
    dropped: list[DroppedSequence] = Field(default_factory=list)
    corrupt_frames: list[int] = Field(default_factory=list)
    frames_without_face: list[int] = Field(default_factory=list)  # checked frames only
    frames_with_several_faces: list[int] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
