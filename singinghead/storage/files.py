"""fsspec-backed file access with atomic publish and SHA-256 checksums.

Local paths and `file://` URLs use temp-file + os.replace (atomic on POSIX). Object stores
(`s3://`) get a finished local file uploaded with one put, which an S3 server makes visible
whole or not at all. Either way a crash never leaves a half-written artifact under its name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

from singinghead.schemas.artifacts import ArtifactRef
from singinghead.schemas.errors import OutputError

CHUNK = 8 << 20


def url_to_fs(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a URL. Object stores are used without fsspec's listings cache: other
    processes (Dask workers) publish and re-publish objects, and a cached listing or ETag would
    make this process read a stale view or fail on a changed object."""
    url = str(url)
    if "://" in url and not url.startswith("file://"):
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    return fsspec.core.url_to_fs(url)


def is_local(url: str | Path) -> bool:
    fs, _ = url_to_fs(url)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(base: str | Path, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def exists(url: str | Path) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def size(url: str | Path) -> int:
    fs, path = url_to_fs(url)
    return int(fs.size(path))


def read_bytes(url: str | Path) -> bytes:
    fs, path = url_to_fs(url)
    return fs.cat_file(path)


def read_json(url: str | Path):
    return json.loads(read_bytes(url))


def sha256_file(url: str | Path) -> tuple[str, int]:
    """Streamed SHA-256 and size of a file (never loads it whole)."""
    fs, path = url_to_fs(url)
    digest, n = hashlib.sha256(), 0
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            n += len(chunk)
    return digest.hexdigest(), n


#: Write failures that are about the output's storage, not about the data being written.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def _output_errors(url: str, tmp: str | None = None) -> Iterator[None]:
    """A full disk, a quota, a read-only or forbidden output becomes an OutputError naming `url`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS or (exc.filename not in (None, tmp, url)
                                                and not str(exc.filename).startswith(str(Path(url).parent))):
            raise
        raise OutputError(url, f"cannot write the output: {exc.strerror or exc} (nothing was published; "
                               "finished artifacts are untouched)") from exc


@contextlib.contextmanager
def atomic_output(url: str | Path, suffix: str = "") -> Iterator[str]:
    """Yield a local temp path; on clean exit publish it at `url` in one atomic step. Storage
    failures (full disk, read-only or forbidden output) raise OutputError naming `url`."""
    url = str(url)
    fs, path = url_to_fs(url)
    if is_local(url):
        with _output_errors(url):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or Path(path).suffix, dir=Path(path).parent)
        os.close(fd)
        try:
            with _output_errors(url, tmp):
                yield tmp
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; published files get the usual mode
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="singinghead-") as tmpdir:
            tmp = os.path.join(tmpdir, f"{uuid.uuid4().hex}{suffix or Path(path).suffix}")
            yield tmp
            fs.put_file(tmp, path)


@contextlib.contextmanager
def local_path(url: str | Path, suffix: str = "") -> Iterator[str]:
    """A local path to read `url` from: the file itself when local, else a temporary download
    (streamed to disk, removed afterwards) for libraries that need a real file (ffmpeg, sndfile)."""
    url = str(url)
    if is_local(url):
        yield url_to_fs(url)[1]
        return
    fs, path = url_to_fs(url)
    with tempfile.TemporaryDirectory(prefix="singinghead-") as tmpdir:
        tmp = os.path.join(tmpdir, f"{uuid.uuid4().hex}{suffix or Path(path).suffix}")
        fs.get_file(path, tmp)
        yield tmp


def read_parquet(url: str | Path, columns: list[str] | None = None):
    """A (small) Parquet table from any URL, read through fsspec."""
    import pyarrow.parquet as pq

    fs, path = url_to_fs(url)
    return pq.read_table(path, filesystem=fs, columns=columns)


def write_bytes_atomic(url: str | Path, data: bytes) -> ArtifactRef:
    with atomic_output(url) as tmp:
        Path(tmp).write_bytes(data)
    return ArtifactRef(url=str(url), sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def write_json_atomic(url: str | Path, obj) -> ArtifactRef:
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    return write_bytes_atomic(url, data)


def artifact_ref(url: str | Path, **meta) -> ArtifactRef:
    digest, n = sha256_file(url)
    return ArtifactRef(url=str(url), sha256=digest, size=n, meta=meta)


def verify(ref: ArtifactRef, deep: bool = False) -> bool:
    """Does the artifact still exist with its recorded size (and, if deep, its checksum)?"""
    if not exists(ref.url) or size(ref.url) != ref.size:
        return False
    return not deep or sha256_file(ref.url)[0] == ref.sha256
