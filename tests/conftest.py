"""Shared fixtures: the sample session (built once per test run) and the real third-party data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real third-party test data not found at {SHARED_DATA} (it sits beside the repo in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_session(tmp_path_factory) -> Path:
    """The full embedded sample session: 2 takes × 20 s of 4K MJPEG. Read-only for tests."""
    from singinghead.samples.session import build_sample_session

    return build_sample_session(tmp_path_factory.mktemp("sample") / "session", seed=0)


@pytest.fixture()
def session_copy(sample_session, tmp_path) -> Path:
    """A private copy of the sample session that a test may damage."""
    dst = tmp_path / "session"
    shutil.copytree(sample_session, dst, ignore=shutil.ignore_patterns("ground_truth"))
    return dst


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
