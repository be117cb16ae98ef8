"""Capture-session manifest: `session.yaml` at the session root.

One subject, its takes (song by song) and its light-stage capture. Paths are relative to the
session folder and may not leave it. `load_manifest` reports every problem at once, one line
each, so an operator fixes the file in one go.

Capture-log offsets are the lab PC's start times of each stream for one take, in seconds on
one clock (any origin). Mic sample 0 is at `mic_start_s`, video frame 0 at `video_start_s`,
song playback (song time 0) at `song_start_s`; so mic time t is song time
t + mic_start_s - song_start_s, and video time t is mic time t + video_start_s - mic_start_s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from singinghead.schemas.errors import ManifestError

MANIFEST_NAME = "session.yaml"

#: The 8 music classes of SingingHead (journal §III-A), as slugs.
CATEGORIES = (
    "art_music",
    "country",
    "hip_hop",
    "rock",
    "folk",
    "rhythm_and_blues",
    "theater_and_drama",
    "march",
)
_ALIASES = {"r&b": "rhythm_and_blues", "rnb": "rhythm_and_blues", "theatre_and_drama": "theater_and_drama"}


def normalise_category(value: str) -> str:
    """'Hip-Hop' → 'hip_hop'; 'R&B' → 'rhythm_and_blues'. Unknown names are returned as given."""
    slug = value.strip().lower().replace("-", "_").replace(" ", "_")
    slug = _ALIASES.get(slug, slug)
    for suffix in ("_music",):
        if slug not in CATEGORIES and slug.endswith(suffix) and slug[: -len(suffix)] in CATEGORIES:
            slug = slug[: -len(suffix)]
    return slug


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subject(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    level: Literal["professional", "amateur"]
    gender: Literal["female", "male", "other"]


class Song(_Strict):
    file: str
    title: str = Field(min_length=1)
    category: str
    language: str = Field(min_length=1)

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        slug = normalise_category(value)
        if slug not in CATEGORIES:
            raise ValueError(f"unknown category {value!r}; expected one of {', '.join(CATEGORIES)}")
        return slug


class CaptureLog(_Strict):
    video_start_s: float
    mic_start_s: float
    song_start_s: float


class Take(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    video: str
    mic: str
    song: Song
    capture_log: CaptureLog

    @property
    def mic_to_song_s(self) -> float:
        """Song time of mic sample 0 according to the capture log."""
        return self.capture_log.mic_start_s - self.capture_log.song_start_s

    @property
    def video_to_mic_s(self) -> float:
        """Mic time of video frame 0 according to the capture log."""
        return self.capture_log.video_start_s - self.capture_log.mic_start_s


class LightStage(_Strict):
    """Either the light stage's photos with their calibration (photogrammetry makes the scan), or a
    ready-made scan (OBJ/PLY) in stated units with, optionally, its 68 landmarks (LJSON, or 68
    lines of x y z in dlib's order and the scan's units); without them they are found on views
    rendered from the scan."""

    photos: str | None = None
    calibration: str | None = None
    scan: str | None = None
    units: Literal["m", "cm", "mm"] | None = None
    landmarks: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LightStage:
        if self.scan is None:
            if self.photos is None or self.calibration is None:
                raise ValueError("give photos and calibration, or a ready-made scan with its units")
            if self.units is not None or self.landmarks is not None:
                raise ValueError("units and landmarks belong to a ready-made scan (light_stage.scan)")
        else:
            if self.photos is not None or self.calibration is not None:
                raise ValueError("give photos and calibration, or a scan, not both")
            if self.units is None:
                raise ValueError("a ready-made scan needs its units (m, cm or mm)")
        return self


class SessionManifest(_Strict):
    session_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    subject: Subject
    takes: list[Take] = Field(min_length=1)
    light_stage: LightStage | None = None

    def take(self, take_id: str) -> Take:
        for take in self.takes:
            if take.id == take_id:
                return take
        raise KeyError(take_id)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _check_path(root: Path, rel: str, where: str, want_dir: bool = False) -> str | None:
    """Problem with one manifest path, or None. Paths must stay inside the session folder."""
    if os.path.isabs(rel):
        return f"{where} {rel!r}: absolute paths are not allowed; give a path inside the session folder"
    link = root / rel
    if link.is_symlink() and not link.exists():
        return f"{where} {rel!r}: unreadable (a broken symbolic link to {os.readlink(link)!r})"
    full = link.resolve()
    if not full.is_relative_to(root.resolve()):
        return f"{where} {rel!r}: path escapes the session folder"
    if not full.exists():
        return f"{where} {rel!r}: {'folder' if want_dir else 'file'} not found"
    if want_dir and not full.is_dir():
        return f"{where} {rel!r}: is not a folder"
    if not want_dir:
        if not full.is_file():
            return f"{where} {rel!r}: unreadable (a folder, not a file)" if full.is_dir() \
                else f"{where} {rel!r}: is not a file"
        try:
            with open(full, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            return f"{where} {rel!r}: unreadable ({exc.strerror or exc})"
        if full.stat().st_size == 0:
            return f"{where} {rel!r}: file is empty"
    return None


def load_manifest(session_dir: str | Path) -> SessionManifest:
    """Read and validate `session.yaml`; raise ManifestError listing every problem."""
    root = Path(session_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(path, [f"no {MANIFEST_NAME} in {root}"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(path, [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ManifestError(path, ["the manifest must be a mapping with subject, takes, light_stage"])
    raw.setdefault("session_id", root.resolve().name)
    try:
        manifest = SessionManifest.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if err["type"] not in ("missing",) and "input" in err else ""
            if err["type"] == "extra_forbidden":
                msg, got = "unknown field", ""
            problems.append(f"{_where(err['loc'])}: {msg}{got}")
        raise ManifestError(path, problems) from None

    problems: list[str] = []
    seen: set[str] = set()
    for i, take in enumerate(manifest.takes):
        if take.id in seen:
            problems.append(f"takes[{i}].id: duplicate take id {take.id!r}")
        seen.add(take.id)
        for field, rel in (("video", take.video), ("mic", take.mic), ("song.file", take.song.file)):
            problem = _check_path(root, rel, f"takes[{i}].{field}")
            if problem:
                problems.append(problem)
    if manifest.light_stage is not None:
        for field, rel, is_dir in (
            ("photos", manifest.light_stage.photos, True),
            ("calibration", manifest.light_stage.calibration, False),
            ("scan", manifest.light_stage.scan, False),
            ("landmarks", manifest.light_stage.landmarks, False),
        ):
            if rel is None:
                continue
            problem = _check_path(root, rel, f"light_stage.{field}", want_dir=is_dir)
            if problem:
                problems.append(problem)
    if problems:
        raise ManifestError(path, problems)
    return manifest


def write_manifest(manifest: SessionManifest, session_dir: str | Path) -> Path:
    path = Path(session_dir) / MANIFEST_NAME
    path.write_text(yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path
