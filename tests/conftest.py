"""Shared fixtures: the sample session (built once per test run) and the real third-party data."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: Adam steps of the FLAME fits in the tests about orchestration (many sessions at once, the real
#: services with a killed worker): they check the catalog, the artifacts, recovery and memory (a
#: fit's memory does not grow with its steps), not the fits' accuracy, which the sample session,
#: the real faces and test_flame_fit check at the default steps (1,000 and 500). A tenth of them
#: takes about 10 core-s off each take.
ORCHESTRATION_FIT_STEPS = {"SINGINGHEAD_FLAME_FRAME_STEPS": "100", "SINGINGHEAD_FLAME_SEQUENCE_STEPS": "50"}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real third-party test data not found at {SHARED_DATA} (it sits beside the repo in CI)")
    return SHARED_DATA


def _low_priority() -> None:
    """A background builder runs only on a core nothing else wants (Linux's SCHED_IDLE, inherited
    by its ffmpeg children; nice 19 where that policy is missing), with its math on one thread (as
    a Dask worker's, which Dask's nanny sets): a second thread would only contend for a core that
    is taken (the overfitting run: 68 core-s on one thread against 82 on two)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"  # before torch and numpy load in this fresh (spawned) process
    import cv2

    cv2.setNumThreads(1)


def _uses_background_builds(module) -> bool:
    return hasattr(module, "background_builds")


def pytest_collection_modifyitems(items) -> None:
    """The tests of modules with `background_builds` run last (in their own order): their inputs
    are built meanwhile, in the core-seconds the tests before them leave idle."""
    items.sort(key=lambda item: _uses_background_builds(item.module))  # stable: the others keep their order


@pytest.fixture(scope="session", autouse=True)
def prebuilt(request, tmp_path_factory) -> Iterator[dict[str, list[Future]]]:
    """Inputs and measurements that only the last tests need (the load test's 20 sessions, the
    real-face takes, the trainer's overfitting run, the FID comparison, the dlib box measurement
    and dlib's own points on the face-track tests' frames) are made from the start of the run in
    two spawned processes that only take idle core-seconds (`_low_priority`): those the tests
    before them leave (a flow's last step on one core, servers starting, flows waiting for a GPU
    slot; about 170 of a run's 2,700), and a test that needs them waits only for what is left. A
    test module declares its own as `background_builds(tmp_path_factory) -> {key: [(function,
    args), ...]}`; only the modules of the tests being run are asked."""
    jobs: dict[str, list] = {}
    for module in sorted({item.module for item in request.session.items}, key=lambda m: m.__name__):
        if _uses_background_builds(module):
            jobs.update(module.background_builds(tmp_path_factory))
    if not jobs:
        yield {}
        return
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_low_priority)
    try:
        yield {key: [pool.submit(fn, *args) for fn, args in calls] for key, calls in jobs.items()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def sample_session_build(tmp_path_factory) -> Future:
    """The full embedded sample session (2 takes × 20 s of 4K MJPEG), being built in a thread: a
    fixture that needs it and something else slow (the Prefect API and Dask cluster) starts both,
    then waits. Its light stage photographs the real textured face scan of ../shared/data when it
    is there (the stand-in head otherwise: a user's clone has no shared data)."""
    from singinghead.samples.real_scan import load_textured_scan
    from singinghead.samples.session import GENERATOR_VERSION, build_sample_session

    scan_dir = SHARED_DATA / "face_scan"
    scan = load_textured_scan(scan_dir / "james.obj", scan_dir / "james.ljson", "mm") \
        if (scan_dir / "james.obj").is_file() else None

    def build() -> Path:
        # Developers may keep one built session between runs (it is deterministic): set
        # SINGINGHEAD_TEST_SESSION_CACHE to a folder. CI builds it afresh.
        cache = os.environ.get("SINGINGHEAD_TEST_SESSION_CACHE")
        if cache:
            session = Path(cache) / f"sample-v{GENERATOR_VERSION}{'-scan' if scan else ''}"
            if not (session / "ground_truth" / "README.md").is_file():
                shutil.rmtree(session, ignore_errors=True)
                build_sample_session(session, seed=0, scan=scan)
            return session
        return build_sample_session(tmp_path_factory.mktemp("sample") / "session", seed=0, scan=scan)

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(build)


@pytest.fixture(scope="session")
def sample_session(sample_session_build) -> Path:
    """The built sample session. Read-only for tests."""
    return sample_session_build.result()


@pytest.fixture(scope="session")
def short_session(tmp_path_factory) -> Path:
    """A short sample session (2 takes × 3.3 s, just above the 3 s a segment needs; own seed, no
    light stage, recorded in the Kinect's 720p colour mode) for tests about the flow rather than
    about accuracy (services, broken takes, output errors): the same pipeline on a sixth of the
    frames and a ninth of the pixels."""
    from singinghead.samples.session import build_sample_session

    return build_sample_session(tmp_path_factory.mktemp("short") / "session", seed=7, duration_s=3.3,
                                light_stage=False, color_mode="720P")


@pytest.fixture()
def short_session_copy(short_session, tmp_path) -> Path:
    dst = tmp_path / "short"
    shutil.copytree(short_session, dst, ignore=shutil.ignore_patterns("ground_truth"))
    return dst


def _copy_or_link_video(src: str, dst: str) -> None:
    if src.endswith(".mkv"):
        with contextlib.suppress(OSError):  # another file system (a session cache elsewhere): copied
            os.link(src, dst)
            return
    shutil.copy2(src, dst)


@pytest.fixture()
def session_copy(sample_session, tmp_path) -> Path:
    """A private copy of the sample session that a test may damage, except its 4K videos (400 MB),
    which are hard links to the sample's: a test that damages a video unlinks it first."""
    dst = tmp_path / "session"
    shutil.copytree(sample_session, dst, ignore=shutil.ignore_patterns("ground_truth"),
                    copy_function=_copy_or_link_video)
    return dst


@pytest.fixture(scope="session")
def prefect_harness():
    """A Prefect API for the run, and one local Dask cluster (2 worker processes, as a flow would
    start) that every flow of the run uses through SINGINGHEAD_DASK_ADDRESS, as a lab's flows
    use its scheduler: workers start (and import torch, MTCNN, dlib) once, not once per flow."""
    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from singinghead.flows.runtime import local_cluster_kwargs

    with prefect_test_harness(server_startup_timeout=60), LocalCluster(**local_cluster_kwargs()) as cluster:
        before = os.environ.get("SINGINGHEAD_DASK_ADDRESS")
        os.environ["SINGINGHEAD_DASK_ADDRESS"] = cluster.scheduler_address
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("SINGINGHEAD_DASK_ADDRESS", None)
            else:
                os.environ["SINGINGHEAD_DASK_ADDRESS"] = before


class PeakRSS:
    """Peak resident memory of this process and each of its descendants (Dask workers), polled."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peak, self._stop = interval_s, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

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

    def peaks_mb(self) -> list[tuple[float, str]]:
        """(MB, process) per process, largest first."""
        return sorted(((rss / 2**20, name) for rss, name in self.peak.values()), reverse=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: (sha256, mtime_ns)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def processed_sample(sample_session_build, prefect_harness, tmp_path_factory) -> dict:
    """process_session run twice on the sample session (real Prefect API, local Dask cluster; both
    started while the session is built)."""
    from singinghead.flows.process_session import run_process_session

    sample_session = sample_session_build.result()
    out = tmp_path_factory.mktemp("processed")
    raw_before = snapshot(sample_session)
    with PeakRSS() as rss:  # 4K takes of 20 s and the light stage beside them
        first = run_process_session(sample_session, out)
    after_first = snapshot(out)
    second = run_process_session(sample_session, out)
    return {"out": out, "first": first, "second": second, "raw_before": raw_before, "peak_rss_mb": rss.peaks_mb(),
            "raw_after": snapshot(sample_session), "after_first": after_first, "after_second": snapshot(out)}


@pytest.fixture()
def audio_step(processed_sample):
    """Run the audio step on one take of a session folder (e.g. a damaged `session_copy`) with the
    processed sample's crop of that take (portrait segments and their landmarks): returns (refs,
    crop refs, take)."""
    from singinghead.schemas.manifest import load_manifest
    from singinghead.storage import files
    from singinghead.storage.catalog import Catalog
    from singinghead.tasks import audio

    def run(session: Path, take_id: str, out: Path):
        crop_refs = next(e.outputs for e in Catalog(str(processed_sample["out"])).entries("crop")
                         if (e.meta["session_id"], e.meta["take_id"]) == ("sample000", take_id))
        take = load_manifest(session).take(take_id)
        refs = audio.audio_for_take(str(session), "sample000", take, files.sha256_file(session / take.song.file)[0],
                                    files.sha256_file(session / take.mic)[0], 0.0, crop_refs, str(out))
        return refs, crop_refs, take

    return run
