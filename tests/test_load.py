"""Load: 20 sample sessions queued at once on one local Dask cluster."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psutil
import pytest

from singinghead.samples.session import build_sample_session
from singinghead.storage import files
from singinghead.storage.catalog import Catalog

SESSIONS = 20
SECONDS = 3.5
STEPS = ("ingest", "crop", "audio", "flame_frames", "flame_sequence")


class PeakRSS:
    """Peak resident memory of this process and each of its descendants (Dask workers), polled."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peak, self._stop = interval_s, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    name = " ".join(p.cmdline()[:3])[-60:]
                except psutil.Error:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, (0, ""))[0], rss), name
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _build(args: tuple[Path, int]) -> Path:
    folder, seed = args
    return build_sample_session(folder, seed=seed, duration_s=SECONDS, light_stage=False, n_takes=1)


@pytest.fixture(scope="module")
def small_sessions(tmp_path_factory) -> list[Path]:
    """20 different sessions of one 3.5 s take (own seeds: own videos, songs and offsets; just
    above the 3 s a segment needs), no light stage; built two at a time."""
    import multiprocessing

    root = tmp_path_factory.mktemp("load")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return pool.map(_build, [(root / f"s{i:02d}", 100 + i) for i in range(SESSIONS)])


def test_twenty_sessions_at_once(small_sessions, tmp_path, prefect_harness):
    from singinghead.flows.process_session import run_process_sessions

    out = tmp_path / "out"
    with PeakRSS() as rss:
        summaries = run_process_sessions(small_sessions, out)
    # All finish, every take of every session has motion.
    assert [s.get("status", "ok") for s in summaries] == ["ok"] * SESSIONS, [s.get("problem") for s in summaries]
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
    peaks = sorted(((rss_b / 2**20, name) for rss_b, name in rss.peak.values()), reverse=True)
    report = {"sessions": SESSIONS, "peak_rss_mb": [{"process": n, "mb": round(mb)} for mb, n in peaks[:6]]}
    (tmp_path / "load_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    assert peaks[0][0] < 4096, peaks[:3]
