"""References to artifacts and the reports that cross task boundaries (small, JSON-able)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ArtifactRef(BaseModel):
    """Where an artifact lives and what its bytes hash to; tasks pass these, never arrays."""

    url: str
    sha256: str
    size: int
    meta: dict[str, Any] = Field(default_factory=dict)


class RawFile(BaseModel):
    """A raw input file, checksummed but never modified."""

    role: str
    path: str
    sha256: str
    size: int


class FrameDrop(BaseModel):
    """Frames the device did not deliver: a gap in the colour timestamps before `frame`."""

    frame: int  # index of the first frame after the gap
    missing: int  # frames lost in the gap (gap / period − 1, rounded)
    gap_s: float  # time from the previous frame


class VideoProbe(BaseModel):
    path: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    first_pts_s: float
    start_offset_ns: int | None = None
    color_mode: str | None = None
    has_calibration: bool = False
    frame_period_s: float | None = None  # the device's frame period (span over its frame slots)
    frame_drops: list[FrameDrop] = []

    @property
    def dropped_frames(self) -> int:
        return sum(d.missing for d in self.frame_drops)


class AudioProbe(BaseModel):
    path: str
    codec: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float


class TakeIngest(BaseModel):
    """Everything ingest learnt about one take; `status` says if later steps may use it."""

    take_id: str
    status: Literal["ok", "warning", "failed"]
    problems: list[str] = Field(default_factory=list)
    files: list[RawFile] = Field(default_factory=list)
    video: VideoProbe | None = None
    mic: AudioProbe | None = None
    song: AudioProbe | None = None
    checks: dict[str, Any] = Field(default_factory=dict)


class IngestReport(BaseModel):
    session_id: str
    subject_id: str
    manifest_sha256: str
    takes: list[TakeIngest]
