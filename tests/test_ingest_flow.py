"""process_session under a real Prefect API, on a local Dask cluster of worker processes."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import ORCHESTRATION_FIT_STEPS
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from singinghead.flows.process_session import run_process_session
from singinghead.flows.runtime import gpu_throttled
from singinghead.schemas.artifacts import IngestReport
from singinghead.storage import files
from singinghead.storage.catalog import Catalog


def _task_runs(flow_run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


@pytest.fixture(scope="module")
def two_runs(processed_sample):
    return processed_sample


def test_ingest_report(two_runs):
    report = IngestReport.model_validate(files.read_json(two_runs["first"]["report"]))
    assert [t.take_id for t in report.takes] == ["take01", "take02"]
    for take in report.takes:
        assert take.status == "ok", take.problems
        assert (take.video.width, take.video.height, take.video.frames) == (3840, 2160, 600)
        assert take.video.fps == pytest.approx(30.0, abs=0.01)
        assert (take.mic.sample_rate, take.song.sample_rate) == (48000, 44100)
        assert take.checks["mic_covers_video"] == pytest.approx(1.0)
        assert {f.role for f in take.files} == {"video", "mic", "song"}
    assert (two_runs["out"] / "sessions/sample000/ingest_report.md").read_text().count("| ok |") == 2


def test_takes_ran_as_prefect_tasks_on_dask(two_runs):
    runs = _task_runs(two_runs["first"]["flow_run_id"])
    ingest_runs = sorted(r.name for r in runs if r.name.startswith("ingest-"))
    assert ingest_runs == ["ingest-take01", "ingest-take02"]
    crop_runs = [r for r in runs if r.name.startswith("crop-")]
    assert sorted(r.name for r in crop_runs) == ["crop-take01", "crop-take02"]
    # Tagged `gpu` only when there are GPUs to share: not on a CPU-only machine without declared
    # GPU workers (no concurrency check per task); the tagged path is the services test's.
    assert all(("gpu" in r.tags) == gpu_throttled() for r in crop_runs)
    assert all(r.state.is_completed() for r in runs)
    assert two_runs["first"]["submitted"] == ["take01", "take02"]
    # Dask ran them: every step's catalog entry was written inside a Dask worker process, not here.
    catalog = Catalog(str(two_runs["out"]))
    for step in ("ingest", "crop", "audio", "flame_frames", "flame_sequence"):
        entries = catalog.entries(step)
        assert len(entries) == 2, step
        for e in entries:
            assert e.ran_on["dask_worker"].startswith("tcp://") and e.ran_on["pid"] != os.getpid(), (step, e.ran_on)


def test_rerun_does_no_work_and_changes_nothing(two_runs):
    assert two_runs["second"]["submitted"] == two_runs["second"]["crop_submitted"] == []
    assert _task_runs(two_runs["second"]["flow_run_id"]) == []
    assert two_runs["after_second"] == two_runs["after_first"]  # same bytes, not even rewritten


def test_fit_steps_and_segment_minimum_are_part_of_the_steps_identity(two_runs, monkeypatch):
    """The FLAME fits ran with the default Adam steps and are found done with them only: a run
    with other steps (SINGINGHEAD_FLAME_FRAME_STEPS) fits again rather than reusing them; a step
    count that would fit nothing is refused, naming the setting. The same for the crop's minimum
    segment length (SINGINGHEAD_CROP_MIN_SECONDS: other segments would be kept)."""
    from pydantic import ValidationError

    from singinghead.schemas.settings import get_settings
    from singinghead.tasks import crop, flame_fit

    catalog = Catalog(str(two_runs["out"]))
    crops = {(e.meta["session_id"], e.meta["take_id"]): e.outputs for e in catalog.entries("crop")}
    assert {e.params["min_seconds"] for e in catalog.entries("crop")} == {get_settings().crop_min_seconds} == {3.0}
    for entry in catalog.entries("crop"):
        video = entry.inputs["video"]
        assert crop.done_outputs(str(two_runs["out"]), video, crop.CropParams.from_settings()) == entry.outputs
        assert crop.done_outputs(str(two_runs["out"]), video, crop.CropParams(min_seconds=1.0)) is None
    assert len(catalog.entries("flame_frames")) == 2
    for entry in catalog.entries("flame_frames"):
        crop_refs = crops[entry.meta["session_id"], entry.meta["take_id"]]
        assert entry.params["steps"] == get_settings().flame_frame_steps == 1000
        assert flame_fit.frames_done(str(two_runs["out"]), crop_refs, 1000) == entry.outputs
        assert flame_fit.frames_done(str(two_runs["out"]), crop_refs, 100) is None
    assert {e.params["steps"] for e in catalog.entries("flame_sequence")} == {500}
    monkeypatch.setenv("SINGINGHEAD_FLAME_FRAME_STEPS", "0")
    with pytest.raises(ValidationError, match="flame_frame_steps"):
        get_settings()
    monkeypatch.setenv("SINGINGHEAD_FLAME_FRAME_STEPS", "1000")
    monkeypatch.setenv("SINGINGHEAD_CROP_MIN_SECONDS", "0")
    with pytest.raises(ValidationError, match="crop_min_seconds"):
        get_settings()


def test_memory_stays_bounded_on_4k_takes(two_runs):
    """Two 20 s takes of 4K MJPEG and the 51-view light stage, on two Dask workers: no process
    (this one, the workers, their ffmpeg) went past 4 GB."""
    peaks = two_runs["peak_rss_mb"]
    print(peaks[:4])
    assert peaks[0][0] < 4096, peaks[:3]
    assert sum(mb > 500 for mb, _ in peaks) >= 3, peaks  # this process and both Dask workers were watched


def test_raw_files_untouched(two_runs):
    assert two_runs["raw_after"] == two_runs["raw_before"]


def test_broken_takes_are_reported_and_others_finish(short_session_copy, sample_session, tmp_path, prefect_harness,
                                                     monkeypatch):
    for name, value in ORCHESTRATION_FIT_STEPS.items():  # about reports, not fit accuracy (conftest)
        monkeypatch.setenv(name, value)
    session = short_session_copy
    video = session / "takes/take02/kinect.mkv"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    # take03: take01's video and song with a silent microphone.
    shutil.copytree(session / "takes/take01", session / "takes/take03")
    sf.write(session / "takes/take03/mic.wav", np.zeros(48000 * 6, np.float32), 48000, subtype="PCM_24")
    manifest = yaml.safe_load((session / "session.yaml").read_text())
    take03 = dict(manifest["takes"][0], id="take03", video="takes/take03/kinect.mkv", mic="takes/take03/mic.wav")
    manifest["takes"].append(take03)
    # and a light stage (the sample's photos) whose calibration names one camera twice
    shutil.copytree(sample_session / "light_stage/photos", session / "light_stage/photos")
    calib = json.loads((sample_session / "light_stage/calibration.json").read_text())
    calib["cameras"].append(calib["cameras"][0])
    (session / "light_stage/calibration.json").write_text(json.dumps(calib))
    manifest["light_stage"] = {"photos": "light_stage/photos", "calibration": "light_stage/calibration.json"}
    (session / "session.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))

    summary = run_process_session(session, tmp_path / "out")
    assert summary["takes"] == {"take01": "ok", "take02": "failed", "take03": "failed"}
    report = IngestReport.model_validate(files.read_json(summary["report"]))
    t2, t3 = report.takes[1], report.takes[2]
    assert len(t2.problems) == 1 and t2.problems[0].startswith("takes/take02/kinect.mkv: file is truncated")
    assert t3.problems[0].startswith("takes/take03/mic.wav: silent")
    # The light stage is reported and the subject keeps the monocular shape; take01 still gets motion.
    assert summary["light_stage"]["status"] == "failed"
    assert "calibration.json: duplicate camera ids: cam00" in summary["light_stage"]["problem"]
    shape = files.read_json(summary["subject_shape"])
    assert shape["source"] == "monocular mean" and "duplicate camera ids" in shape["light_stage_problem"]
    assert list(summary["motion"]) == ["take01"]
