"""fsspec-backed file access with atomic publish and SHA-256 checksums.

Local paths and `file://` URLs use temp-file + os.replace (atomic on POSIX). Object stores
(`s3://`) get a finished local file uploaded with one put, which an S3 server makes visible
whole or not at all. Either way a crash never leaves a half-written artifact under its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

from singinghead.schemas.artifacts import ArtifactRef

CHUNK = 8 << 20


def url_to_fs(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


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
    with fs.open(path, "rb") as fh:
        return fh.read()


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


@contextlib.contextmanager
def atomic_output(url: str | Path, suffix: str = "") -> Iterator[str]:
    """Yield a local temp path; on clean exit publish it at `url` in one atomic step."""
    url = str(url)
    fs, path = url_to_fs(url)
    if is_local(url):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or Path(path).suffix, dir=Path(path).parent)
        os.close(fd)
        try:
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
