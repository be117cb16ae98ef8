"""An output that cannot be written (here: a file-size limit, what a full disk looks like to a
writer) is reported with the file named, publishes nothing and leaves finished artifacts alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from singinghead.schemas.errors import OutputError
from singinghead.schemas.manifest import load_manifest
from singinghead.storage import files
from singinghead.storage.catalog import Catalog
from singinghead.tasks import crop

CROP_UNDER_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
limit = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from singinghead.tasks.crop import crop_for_take
crop_for_take(sys.argv[1], "sample007", "take01", "takes/take01/kinect.mkv", sys.argv[2], sys.argv[3])
"""


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_full_output_is_reported_and_nothing_half_written(short_session, tmp_path):
    out = tmp_path / "out"
    take = load_manifest(short_session).take("take01")
    sha = Catalog(str(out)).raw_checksum(short_session / take.video)[0]
    finished = files.write_json_atomic(files.join(str(out), "sessions/sample007/ingest_report.json"), {"ok": True})
    before = _files(out)

    proc = subprocess.run([sys.executable, "-c", CROP_UNDER_LIMIT, str(short_session), sha, str(out),
                           str(256 * 1024)], capture_output=True, text=True)
    assert proc.returncode != 0
    message = proc.stderr.strip().split("SingingHeadError: ", 1)[-1]
    assert message.startswith(str(out)) and "take01_seg000.mp4: encoding frames 0–" in message, message
    assert "File too large" in message or "file size limit exceeded" in message.lower(), message

    after = _files(out)
    new = sorted(set(after) - set(before))
    assert not [p for p in new if p.endswith(".mp4") or "/.tmp-" in p or p.startswith(".tmp-")], new
    assert Catalog(str(out)).entries("crop") == []  # the step is not recorded as done
    assert all(after[p] == before[p] for p in before)  # finished artifacts untouched
    assert files.verify(finished, deep=True)

    # With room again the same call completes.
    refs = crop.crop_for_take(str(short_session), "sample007", "take01", take.video, sha, str(out))
    assert all(files.verify(r, deep=True) for r in refs)


def test_python_writers_get_an_output_error_naming_the_file(tmp_path):
    target = tmp_path / "published.npz"
    code = f"""
import resource, signal, numpy as np
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from singinghead.storage import files
with files.atomic_output({str(target)!r}) as tmp:
    np.savez_compressed(tmp, noise=np.random.default_rng(0).normal(size=100_000))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"singinghead.schemas.errors.OutputError: {target}: cannot write the output: File too large")
    assert not target.exists() and not list(tmp_path.glob(".tmp-*"))


def test_output_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(OutputError("s3://b/x.mp4", "cannot write the output: No space left")))
    assert isinstance(err, OutputError) and str(err) == "s3://b/x.mp4: cannot write the output: No space left"
