"""Catalog of completed steps, for incremental runs.

An entry is keyed by the step name, the step's version, its parameters and the checksums of
its inputs; it lists the artifacts the step produced. A lookup only counts as done when every
recorded artifact still exists with its recorded size. One JSON file per entry, published
atomically, so concurrent Dask workers never step on each other and a crash mid-write leaves
no entry at all (the step simply runs again).

Raw-file checksums are cached by (path, size, mtime): re-running on an unchanged session does
not hash gigabytes of 4K video again. Raw inputs are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from singinghead.schemas.artifacts import ArtifactRef
from singinghead.storage import files


class CatalogEntry(BaseModel):
    step: str
    version: str
    key: str
    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: list[ArtifactRef]
    meta: dict[str, Any] = Field(default_factory=dict)
    finished_at: float = 0.0
    ran_on: dict[str, Any] = Field(default_factory=dict)  # host, pid, Dask worker: where it was made


def where_running() -> dict[str, Any]:
    """This process: host, pid and, inside a Dask worker, the worker's address (None elsewhere)."""
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "dask_worker": worker}


def cache_key(step: str, version: str, params: dict[str, Any], inputs: dict[str, str]) -> str:
    blob = json.dumps(
        {"step": step, "version": version, "params": params, "inputs": inputs}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class Catalog:
    def __init__(self, out_url: str | Path):
        self.out_url = str(out_url)
        self.root = files.join(self.out_url, "catalog")

    def _entry_url(self, step: str, key: str) -> str:
        return files.join(self.root, "steps", step, f"{key}.json")

    def lookup(self, step: str, version: str, params: dict, inputs: dict[str, str]) -> CatalogEntry | None:
        key = cache_key(step, version, params, inputs)
        url = self._entry_url(step, key)
        if not files.exists(url):
            return None
        entry = CatalogEntry.model_validate(files.read_json(url))
        if not all(files.verify(ref) for ref in entry.outputs):
            return None
        return entry

    def record(
        self,
        step: str,
        version: str,
        params: dict,
        inputs: dict[str, str],
        outputs: list[ArtifactRef],
        meta: dict | None = None,
    ) -> CatalogEntry:
        key = cache_key(step, version, params, inputs)
        entry = CatalogEntry(
            step=step, version=version, key=key, params=params, inputs=inputs,
            outputs=outputs, meta=meta or {}, finished_at=time.time(), ran_on=where_running(),
        )
        files.write_json_atomic(self._entry_url(step, key), entry.model_dump(mode="json"))
        return entry

    def entries(self, step: str) -> list[CatalogEntry]:
        fs, path = files.url_to_fs(files.join(self.root, "steps", step))
        if not fs.exists(path):
            return []
        return [
            CatalogEntry.model_validate(json.loads(fs.cat_file(p)))
            for p in sorted(fs.ls(path, detail=False))
            if p.endswith(".json")
        ]

    def register_session(self, session_id: str, info: dict[str, Any]) -> ArtifactRef:
        url = files.join(self.root, "sessions", f"{session_id}.json")
        if files.exists(url) and files.read_json(url) == json.loads(json.dumps(info, default=str)):
            return files.artifact_ref(url)
        return files.write_json_atomic(url, info)

    def raw_checksum(self, path: str | Path) -> tuple[str, int]:
        """SHA-256 of a raw local file, cached by (resolved path, size, mtime_ns)."""
        full = Path(path).resolve()
        st = full.stat()
        name = hashlib.sha256(str(full).encode()).hexdigest()[:32]
        url = files.join(self.root, "raw-checksums", f"{name}.json")
        if files.exists(url):
            cached = files.read_json(url)
            if cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
                return cached["sha256"], st.st_size
        digest, n = files.sha256_file(str(full))
        files.write_json_atomic(
            url, {"path": str(full), "size": n, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        )
        return digest, n

