"""Device frame drops: read from the Kinect timestamps, reported, and never allowed to slide the
audio off its frames.

The truth is the generator's: it renders every frame of a known 30 fps motion and leaves seeded
frames out of the recording (the kept ones keep their capture times), and it knows the mic time
of every rendered frame. A click is put into the mic at the true time of a frame after a drop;
it must land on the sample of that frame's motion row in its segment's singing WAV. With a
segment running across the drop (frame k taken as k / 30 s after the segment start) it would
land a whole frame or more late.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from singinghead.capture_rigs.azure_kinect import KinectRecording
from singinghead.samples.session import build_sample_session
from singinghead.schemas.artifacts import RawFile
from singinghead.schemas.manifest import load_manifest
from singinghead.storage import files
from singinghead.tasks import audio, crop, ingest

SEED = 13  # drops after frames 39 and 151: the segments between and after them are over 3 s


@pytest.fixture(scope="module")
def dropping_session(tmp_path_factory):
    """One 10 s take (720p, no light stage) whose recording lost frames in two places."""
    session = build_sample_session(tmp_path_factory.mktemp("drops") / "session", seed=SEED, duration_s=10.0,
                                   light_stage=False, n_takes=1, color_mode="720P", frame_drops=2)
    gt = json.loads((session / "ground_truth/ground_truth.json").read_text())
    recorded = np.load(session / "ground_truth/take01_frames.npz")["recorded"]
    return session, gt, np.flatnonzero(recorded)  # the k-th recorded frame's number in the motion


def test_drops_are_read_from_the_device_timestamps(dropping_session):
    session, gt, rendered = dropping_session
    steps = np.diff(rendered)
    expected = [(int(k) + 1, int(steps[k]) - 1) for k in np.flatnonzero(steps > 1)]
    assert len(expected) == 2 and sum(m for _, m in expected) == len(gt["takes"]["take01"]["dropped_frames"])
    with KinectRecording(session / "takes/take01/kinect.mkv") as rec:
        probe = rec.probe()
    assert [(d.frame, d.missing) for d in probe.frame_drops] == expected
    assert probe.frames == len(rendered) and probe.fps == pytest.approx(30.0, abs=0.01)
    assert probe.duration_s == pytest.approx(10.0, abs=0.002)  # the take's span, dropped frames included

    take = load_manifest(session).takes[0]
    raw = [RawFile(role=role, path=rel, sha256=files.sha256_file(session / rel)[0], size=0)
           for role, rel in (("video", take.video), ("mic", take.mic), ("song", take.song.file))]
    report = ingest.probe_take(session, take, raw)
    assert report.status == "warning"
    assert any(f"dropped {sum(m for _, m in expected)} frames in 2 gaps" in p for p in report.problems), report.problems


def test_audio_stays_on_its_frames_across_a_drop(dropping_session, tmp_path):
    session, gt, rendered = dropping_session
    take = load_manifest(session).takes[0]
    out = str(tmp_path / "out")
    crop_refs = crop.crop_for_take(str(session), "drops", take.id, take.video, "video-sha", out)
    summary = crop.read_summary(crop_refs)
    table = next(r for r in crop_refs if r.meta.get("kind") == "segments")
    rows = pq.read_table(table.url).to_pylist()
    drops = [k for k in range(1, len(rendered)) if rendered[k] - rendered[k - 1] > 1]

    # No segment runs across a drop: its frames are evenly spaced, and a cut says why it ended.
    for row in rows:
        first, last = row["frame_start"], row["frame_start"] + row["n_frames"] - 1
        assert not [k for k in drops if first < k <= last], (row["frame_start"], row["n_frames"], drops)
        assert rendered[last] - rendered[first] == last - first
    assert sum("frames dropped before frame" in c.reason for c in summary.cuts) == 2, summary.cuts
    # The next segment starts at the next checked frame (the crop checks every few frames).
    step = crop.CropParams().check_every
    after = [row for row in rows if any(d <= row["frame_start"] < d + step for d in drops)]
    assert after, f"no segment starts at a drop ({drops}): {[(r['frame_start'], r['n_frames']) for r in rows]}"
    row = after[0]

    # A click at the true mic time of a frame 2 s into the segment that starts at the drop.
    k = 60
    frame = rendered[row["frame_start"] + k]  # its number in the rendered (true) motion
    v2m = gt["takes"]["take01"]["offsets_s"]["video_to_mic"]
    mic, sr = sf.read(session / take.mic, dtype="float32")
    click_at = int(round((frame / 30.0 + v2m) * sr))
    mic[click_at - 200: click_at + 200] *= 0.01  # quiet around the click so the peak is the click
    mic[click_at] = 0.9
    damaged = tmp_path / "mic.wav"
    sf.write(damaged, mic, sr, subtype="FLOAT")
    take = take.model_copy(update={"mic": str(damaged)})
    with KinectRecording(session / take.video) as rec:
        first_pts = float(rec.timestamps()[0])
    refs = audio.audio_for_take(str(session), "drops", take, "song-sha", "mic-sha", first_pts, crop_refs, out)
    report = audio.read_report(refs)
    wav_url = next(r.url for r in refs if r.meta.get("kind") == "singing"
                   and r.meta["segment_index"] == row["segment_index"])
    wav, wav_sr = sf.read(wav_url)
    # Row k of the segment is sample k × 16000 / 30 of its WAV, up to what the step used as the
    # video → mic offset (its own measurement or the log) and the recording's 1 ms timebase.
    expected = round((k / 30.0 + v2m - report["video_offset"]["used_s"]) * wav_sr)
    window = np.abs(wav[expected - 100: expected + 101])
    assert abs(int(np.argmax(window)) - 100) <= 12, (int(np.argmax(window)) - 100, frame)
