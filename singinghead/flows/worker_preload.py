"""Dask worker preload of the lab image (deploy/dask.yaml: `distributed.worker.preload`).

The processing steps import torch, MTCNN, dlib and librosa: 10–15 s of a 2-core worker's time,
and 1 GB (not roma: its import brings torch._dynamo, 5 s more, and the FLAME layer converts its
rotations itself). Imported here, while the worker starts and before it registers with the
scheduler, the first task a worker runs (and the first after the nanny restarts a killed one)
does not pay them inside a take's critical path."""

from __future__ import annotations

import importlib

STEP_MODULES = ("singinghead.tasks.ingest", "singinghead.tasks.crop", "singinghead.tasks.audio",
                "singinghead.tasks.flame_fit", "singinghead.tasks.photogrammetry", "singinghead.tasks.scan_fit",
                "singinghead.tasks.scan_import")


def dask_setup(worker) -> None:
    for name in STEP_MODULES:
        importlib.import_module(name)
