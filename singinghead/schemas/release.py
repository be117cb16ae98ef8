"""A dataset release: 8 s windows in Parquet shards (+ NPZ audio blocks), a manifest, media files.

Layout of a release folder:
- `release.json`: version, builds (what each added), parameters, counts.
- `manifest.parquet` (MANIFEST_SCHEMA): one row per window with its split and every file it uses
  (path relative to the release, size, SHA-256).
- `shards/<split>/windows-b<build>-<n>.parquet` (WINDOW_SCHEMA): the per-window arrays as flat
  fixed-size lists (row-major; shapes in WINDOW_ARRAYS), so a row group converts to numpy
  without copies per window.
- `shards/<split>/windows-b<build>-<n>.audio.npz`: the same windows' 16 kHz singing and BGM as
  dense (N, 128000) float32 blocks, rows in shard order. Audio is a large dense block per window
  that the trainer always reads whole: an uncompressed NPZ is read at disk speed with one
  `np.load`, where a Parquet list column would be decoded value by value.
- `media/<window_id>.mp4` (1024² H.264), `media/<window_id>.wav`, `media/<window_id>_bgm.wav`.
- `dataset_card.md`, `stats/`, `qa/index.html`.
"""

from __future__ import annotations

import pyarrow as pa

WINDOW_FRAMES = 240  # 8 s at 30 fps (SPEC §2.9)
SAMPLE_RATE = 16_000
WINDOW_SAMPLES = WINDOW_FRAMES * SAMPLE_RATE // 30
SPLITS = ("train", "val", "test")
SPLIT_RATIOS = (0.80, 0.05, 0.15)

#: Per-window arrays of a shard row: name → per-window shape.
WINDOW_ARRAYS = {
    "motion": (WINDOW_FRAMES, 59),
    "translation": (WINDOW_FRAMES, 3),
    "landmarks": (WINDOW_FRAMES, 68, 2),
    "landmark_confidence": (WINDOW_FRAMES,),
    "mouth_opening": (WINDOW_FRAMES,),
    "eye_closure": (WINDOW_FRAMES, 2),
    "reprojection_error_px": (WINDOW_FRAMES,),
    "bgm_mfcc": (WINDOW_FRAMES, 64),
    "shape": (100,),
    "camera": (4,),
}


def _fixed(shape: tuple[int, ...]) -> pa.DataType:
    n = 1
    for d in shape:
        n *= d
    return pa.list_(pa.float32(), n)


IDENTITY_FIELDS = [
    pa.field("window_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("subject_id", pa.string()),
    pa.field("subject_level", pa.string()),
    pa.field("subject_gender", pa.string()),
    pa.field("session_id", pa.string()),
    pa.field("take_id", pa.string()),
    pa.field("segment_index", pa.int32()),
    pa.field("window_index", pa.int32()),
    pa.field("start_frame", pa.int32()),  # first frame of the window in its segment
    pa.field("song_title", pa.string()),
    pa.field("song_category", pa.string()),
    pa.field("song_language", pa.string()),
]

WINDOW_SCHEMA = pa.schema(IDENTITY_FIELDS + [
    *(pa.field(name, _fixed(shape)) for name, shape in WINDOW_ARRAYS.items()),
    pa.field("video_to_mic_s", pa.float64()),
    pa.field("mic_to_song_s", pa.float64()),
    pa.field("sync_status", pa.string()),  # SYNC_STATUSES
    pa.field("qa_flags", pa.list_(pa.string())),
])


def _file_fields(role: str) -> list[pa.Field]:
    return [pa.field(f"{role}_path", pa.string()), pa.field(f"{role}_size", pa.int64()),
            pa.field(f"{role}_sha256", pa.string())]


#: Per window, its take's audio offsets: `measured` (both the video→mic and the mic→song offsets
#: confirmed by a confident measurement), `unverified` (at least one is the capture log's unchecked
#: value: its reason is in qa_flags) or `unknown` (imported data without sync information).
SYNC_STATUSES = ("measured", "unverified", "unknown")

FILE_ROLES = ("shard", "audio_block", "video", "singing", "bgm")

MANIFEST_SCHEMA = pa.schema(IDENTITY_FIELDS + [
    pa.field("build", pa.int32()),
    pa.field("shard_row", pa.int32()),
    *(f for role in FILE_ROLES for f in _file_fields(role)),
    pa.field("sync_status", pa.string()),
    pa.field("qa_flags", pa.list_(pa.string())),
])
