"""Ingest: probe every stream of a take and check that they fit together.

Raw files are only opened for reading. A take whose streams cannot be used is reported as
`failed` with one message per problem (which file, what is wrong); usable takes with doubtful
properties are `warning`. Deterministic input problems are cached in the catalog like
successes, so re-running an unchanged session does no work; unexpected errors are not cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import task

from singinghead.capture_rigs.audio_files import level_stats, probe_audio
from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.schemas.artifacts import ArtifactRef, RawFile, TakeIngest
from singinghead.schemas.errors import InputError
from singinghead.schemas.manifest import Take
from singinghead.storage import files
from singinghead.storage.catalog import Catalog, cache_key

STEP = "ingest"
VERSION = "2"  # 2: frame drops from the device timestamps

EXPECTED_FPS = 30.0
SILENT_PEAK_DBFS = -50.0  # a mic take whose loudest sample is below this holds no voice
CLIPPED_RATIO = 1e-3  # more clipped samples than this are audible distortion
MIN_OVERLAP = 0.9  # share of the video that the mic must cover to be usable


def take_inputs(take: Take, raw: list[RawFile]) -> dict[str, str]:
    """Catalog inputs of a take: raw checksums plus the capture log it is checked against."""
    log = json.dumps(take.capture_log.model_dump(), sort_keys=True)
    return {**{f.role: f.sha256 for f in raw}, "capture_log": hashlib.sha256(log.encode()).hexdigest()}


def probe_take(session_dir: str | Path, take: Take, raw: list[RawFile]) -> TakeIngest:
    """Probe video, mic and song of one take and check durations against the capture log."""
    root = Path(session_dir)
    problems: list[str] = []
    warnings: list[str] = []
    result = TakeIngest(take_id=take.id, status="ok", files=raw)

    try:
        with KinectRecording(root / take.video) as rec:
            result.video = rec.probe()
            if not result.video.has_calibration:
                warnings.append(f"{take.video}: no calibration.json attachment; camera intrinsics unknown")
    except InputError as exc:
        problems.append(str(exc).replace(str(root) + "/", ""))
    for role, rel in (("mic", take.mic), ("song", take.song.file)):
        try:
            setattr(result, role, probe_audio(root / rel))
        except InputError as exc:
            problems.append(str(exc).replace(str(root) + "/", ""))

    v, mic, song = result.video, result.mic, result.song
    if v is not None and abs(v.fps - EXPECTED_FPS) > 0.5:
        warnings.append(f"{take.video}: colour track runs at {v.fps:.2f} fps, expected {EXPECTED_FPS:g}")
    if v is not None and v.frame_drops:
        longest = max(v.frame_drops, key=lambda d: d.gap_s)
        warnings.append(f"{take.video}: the device dropped {v.dropped_frames} frames in {len(v.frame_drops)} "
                        f"gaps (longest {longest.gap_s * 1000:.0f} ms, before frame {longest.frame}); "
                        "portrait segments are cut at every gap")
    if mic is not None:
        levels = level_stats(root / take.mic)
        result.checks["mic_levels"] = levels
        if levels["peak_dbfs"] < SILENT_PEAK_DBFS:
            problems.append(f"{take.mic}: silent (peak {levels['peak_dbfs']:.1f} dBFS)")
        elif levels["clipped_ratio"] > CLIPPED_RATIO:
            warnings.append(f"{take.mic}: clipped ({levels['clipped_ratio']:.2%} of samples at full scale)")
    if v is not None and mic is not None:
        # Video span on the mic clock, from the capture log.
        start = take.video_to_mic_s
        end = start + v.duration_s
        overlap = max(0.0, min(end, mic.duration_s) - max(start, 0.0)) / v.duration_s
        result.checks["video_on_mic_s"] = [start, end]
        result.checks["mic_covers_video"] = overlap
        if overlap < MIN_OVERLAP:
            problems.append(
                f"{take.id}: the capture log puts the video at mic time {start:.2f}–{end:.2f} s but the mic "
                f"recording lasts {mic.duration_s:.2f} s: only {overlap:.0%} of the video has vocals"
            )
        elif overlap < 0.999:
            warnings.append(f"{take.id}: the mic covers {overlap:.1%} of the video")
    if mic is not None and song is not None:
        start = take.mic_to_song_s
        result.checks["mic_on_song_s"] = [start, start + mic.duration_s]
        if start < 0 or start > song.duration_s:
            problems.append(
                f"{take.id}: the capture log puts mic start at song time {start:.2f} s, outside the song "
                f"({song.duration_s:.2f} s)"
            )
        elif start + mic.duration_s > song.duration_s + 1.0:
            warnings.append(f"{take.id}: the mic goes on {start + mic.duration_s - song.duration_s:.1f} s "
                            "after the song ends")

    result.problems = problems + warnings
    result.status = "failed" if problems else ("warning" if warnings else "ok")
    return result


def take_artifact_url(out: str, session_id: str, take_id: str, key: str) -> str:
    return files.join(out, "sessions", session_id, "takes", take_id, STEP, f"{key[:16]}.json")


def ingest_take(session_dir: str, session_id: str, take: Take, raw: list[RawFile], out: str) -> ArtifactRef:
    """Probe a take, publish its ingest record and register it in the catalog."""
    catalog = Catalog(out)
    inputs = take_inputs(take, raw)
    params: dict = {}
    key = cache_key(STEP, VERSION, params, inputs)
    try:
        result = probe_take(session_dir, take, raw)
        cacheable = True
    except Exception as exc:  # an unexpected failure: report it, do not cache it
        result = TakeIngest(take_id=take.id, status="failed", files=raw,
                            problems=[f"{take.id}: ingest crashed: {type(exc).__name__}: {exc}"])
        cacheable = False
    ref = files.write_json_atomic(take_artifact_url(out, session_id, take.id, key), result.model_dump(mode="json"))
    ref.meta = {"take_id": take.id, "status": result.status}
    if cacheable:
        catalog.record(STEP, VERSION, params, inputs, [ref], meta={"session_id": session_id, "take_id": take.id})
    return ref


@task(name="ingest-take", task_run_name="ingest-{take.id}", retries=1, retry_delay_seconds=2)
def ingest_take_task(session_dir: str, session_id: str, take: Take, raw: list[RawFile], out: str) -> ArtifactRef:
    return ingest_take(session_dir, session_id, take, raw, out)
