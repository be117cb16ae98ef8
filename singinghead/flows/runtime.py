"""Where flows run: one Prefect API for the flow and all its Dask workers, and the task runner.

With PREFECT_API_URL set (a lab's Prefect server, or the test harness) everything reports
there. Without it, one temporary local API server is started for the run and its URL exported,
so that Dask worker processes report to the same server instead of each starting their own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import dask
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from singinghead.schemas.settings import get_settings, torch_device

# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns. Setting it turns off
# glibc's adaptive mmap threshold, so every array over 128 KB is mmapped and unmapped anew: the
# plane sweep, the 4K frame buffers and the fits spent more time in page faults than computing
# (the dense scan: 56 s alone, 197 s with the variable set). Unset it for the workers we start;
# `dask worker` processes of the lab image get the same from deploy/dask.yaml.
dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


@contextlib.contextmanager
def _exported(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the API URL every process of this run reports to."""
    url = PREFECT_API_URL.value()
    if url:
        with _exported("PREFECT_API_URL", url):
            yield url
        return
    from prefect.server.api.server import SubprocessASGIServer  # the server's modules: only when we start one

    server = SubprocessASGIServer()
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}), _exported("PREFECT_API_URL", server.api_url):
            try:
                yield server.api_url
            finally:
                # Flush logs and events while the server still listens, or the clients retry for minutes.
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all()
    finally:
        server.stop()


def task_runner(dask_address: str | None = None) -> DaskTaskRunner:
    """An existing scheduler when an address is given, else a local cluster of processes."""
    settings = get_settings()
    address = dask_address or settings.dask_address
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs())


def local_cluster_kwargs() -> dict:
    """The local cluster of worker processes used when no scheduler is given."""
    settings = get_settings()
    cluster = {"n_workers": settings.dask_workers, "threads_per_worker": settings.dask_threads_per_worker,
               "processes": True, "dashboard_address": ":0"}
    if settings.dask_gpu_resource:
        cluster["resources"] = {"GPU": settings.local_gpus_per_worker}
    return cluster


GPU_TAG = "gpu"


def gpu_throttled() -> bool:
    """Whether GPU tasks are throttled: the lab declared GPU workers (settings.dask_gpu_resource)
    or this machine's torch device is a GPU. Without a GPU there is nothing to share, and the tag's
    concurrency check is one Prefect API round trip before every task (0.2–2.5 s measured on a
    busy 2-core worker: bench/scale.py's idle time)."""
    return get_settings().dask_gpu_resource or torch_device().type == "cuda"


def submit_gpu(task, *args):
    """Submit a task that runs on the GPU when there is one. When GPUs are throttled it carries
    the Prefect tag `gpu` (a tag concurrency limit `gpu` caps them across the whole deployment)
    and, when workers advertise them (settings.dask_gpu_resource), asks Dask for one `GPU`
    resource, so each worker runs at most as many as it has GPUs."""
    if not gpu_throttled():
        return task.submit(*args)
    tagged = task.with_options(tags={*task.tags, GPU_TAG})
    if not get_settings().dask_gpu_resource:
        return tagged.submit(*args)
    with dask.annotate(resources={"GPU": 1}):
        return tagged.submit(*args)


class Listeners:
    """Who is told about a flow's progress in this process (the CLI's live displays): callbacks
    added for the length of a `with listening(callback)` block, each told every event."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []

    @contextlib.contextmanager
    def listening(self, callback: Callable[..., None]) -> Iterator[None]:
        self._callbacks.append(callback)
        try:
            yield
        finally:
            self._callbacks.remove(callback)

    def tell(self, *event) -> None:
        for callback in list(self._callbacks):
            callback(*event)
