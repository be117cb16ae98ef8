"""Load: 20 sample sessions queued at once on one local Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ORCHESTRATION_FIT_STEPS, PeakRSS

from singinghead.samples.session import build_sample_session
from singinghead.storage import files
from singinghead.storage.catalog import Catalog

SESSIONS = 20
#: Takes of 1.3 s, whose one segment the crop keeps with a 1 s minimum (MIN_SEGMENT_S, the
#: `crop_min_seconds` setting; 3 s by default): this test is about many sessions at once — the
#: catalog, whole artifacts, memory — and every step still runs on every take; a 3.3 s take (just
#: above the default minimum) has 2.5 times the frames to decode, detect, encode and fit.
SECONDS = 1.3
MIN_SEGMENT_S = "1.0"
STEPS = ("ingest", "crop", "audio", "flame_frames", "flame_sequence")


def _build(args: tuple[Path, int]) -> Path:
    folder, seed = args
    return build_sample_session(folder, seed=seed, duration_s=SECONDS, light_stage=False, n_takes=1,
                                color_mode="720P")


def background_builds(tmp_path_factory) -> dict:
    """20 different sessions of one 1.3 s take (own seeds: own videos, songs and offsets), no light
    stage, recorded in the Kinect's 720p colour mode (memory on 4K takes is checked on the sample
    session's 20 s takes, test_ingest_flow); built in the background while the tests before this
    module run (conftest.prebuilt)."""
    root = tmp_path_factory.mktemp("load")
    return {"small_sessions": [(_build, ((root / f"s{i:02d}", 100 + i),)) for i in range(SESSIONS)]}


@pytest.fixture(scope="module")
def small_sessions(prebuilt) -> list[Path]:
    return [future.result() for future in prebuilt["small_sessions"]]


def test_twenty_sessions_at_once(small_sessions, tmp_path, prefect_harness, monkeypatch):
    from singinghead.flows.process_session import run_process_sessions

    for name, value in {**ORCHESTRATION_FIT_STEPS, "SINGINGHEAD_CROP_MIN_SECONDS": MIN_SEGMENT_S}.items():
        monkeypatch.setenv(name, value)  # read by the flows, which run in this process

    out = tmp_path / "out"
    with PeakRSS() as rss:
        summaries = run_process_sessions(small_sessions, out)
    # All finish, every take of every session has motion.
    assert [s.get("status", "ok") for s in summaries] == ["ok"] * SESSIONS, [
        (i, s.get("problem")) for i, s in enumerate(summaries) if s.get("status", "ok") != "ok"]
    assert all(s["takes"] == {"take01": "ok"} for s in summaries)
    assert all(sorted(s["motion"]) == ["take01"] for s in summaries)

    # The catalog has exactly the expected entries: one per take and step, each output whole.
    catalog = Catalog(str(out))
    urls = []
    for step in STEPS:
        entries = catalog.entries(step)
        assert len(entries) == SESSIONS, step
        assert sorted((e.meta["session_id"], e.meta["take_id"]) for e in entries) == [
            (f"sample{100 + i:03d}", "take01") for i in range(SESSIONS)]
        for entry in entries:
            for ref in entry.outputs:
                assert files.verify(ref, deep=True), ref.url
                urls.append(ref.url)
    assert len(urls) == len(set(urls))
    assert not [p for p in out.rglob(".tmp-*")], "half-written files left behind"

    # Memory stays bounded: report the peaks, and no process went past 4 GB.
    peaks = rss.peaks_mb()
    report = {"sessions": SESSIONS, "peak_rss_mb": [{"process": n, "mb": round(mb)} for mb, n in peaks[:6]]}
    (tmp_path / "load_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    assert peaks[0][0] < 4096, peaks[:3]
