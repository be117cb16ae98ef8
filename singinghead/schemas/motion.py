"""The 59-d per-frame FLAME motion layout of the released SingingHead data (SPEC §2.8)."""

from __future__ import annotations

import pyarrow as pa

FPS = 30
MOTION_DIM = 59
SHAPE_DIM = 100
EXPRESSION = slice(0, 50)
GLOBAL_ORIENT = slice(50, 53)
NECK = slice(53, 56)
JAW = slice(56, 59)
HEAD_POSE = slice(50, 56)  # global + neck, the 6-d pose used by PPE

#: Where a subject's shape came from: the FLAME fit to its light-stage (or ready-made) scan, or,
#: when the session has no usable scan, the mean of the monocular per-frame fits (weaker: flagged).
SHAPE_SCAN = "light-stage scan fit"
SHAPE_MONOCULAR = "monocular mean"

#: One row per portrait frame of a segment: `<segment>_motion.parquet`. Table metadata holds the
#: subject's shape (`shape`, JSON list of 100), where it came from (`shape_source`) and the FLAME
#: model it belongs to (`flame_model`).
MOTION_SCHEMA = pa.schema([
    pa.field("take_id", pa.string()),
    pa.field("segment_index", pa.int32()),
    pa.field("frame", pa.int32()),  # index in the segment (portrait frame)
    pa.field("source_frame", pa.int32()),  # colour-track frame it was cut from
    pa.field("timestamp_s", pa.float64()),  # source (MKV) timestamp
    pa.field("motion", pa.list_(pa.float32(), MOTION_DIM)),  # SPEC §2.8 layout
    pa.field("translation", pa.list_(pa.float32(), 3)),  # metres, camera space (OpenCV axes)
    pa.field("camera", pa.list_(pa.float32(), 4)),  # portrait fx, fy, cx, cy (px at 1024²)
    pa.field("reprojection_error_px", pa.float32()),  # RMS over the 68 points; NaN without landmarks
    pa.field("landmarks", pa.list_(pa.float32(), 68 * 2)),  # detected (dlib), undistorted, portrait px
    pa.field("landmark_confidence", pa.float32()),
    pa.field("mouth_opening", pa.float32()),
    pa.field("eye_closure", pa.list_(pa.float32(), 2)),  # left, right: 0 open … 1 closed
    pa.field("outliers", pa.list_(pa.string())),  # parameter groups replaced as box-plot outliers
])
