"""Scale-out against real services on loopback, started as processes (there is no Docker engine
here): an S3-compatible object store (moto's server), `prefect server start`, and a Dask
scheduler with two worker processes that advertise one GPU each."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ORCHESTRATION_FIT_STEPS

from singinghead.storage import files
from singinghead.storage.catalog import Catalog

BIN = Path(sys.executable).parent
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"  # the lab image's /etc/dask configuration
BUCKET = "singinghead"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto in server mode on a loopback port; AWS_* exported so s3fs (here and in workers) uses it."""
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _wait_http(url + "/", 60, proc)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield url
    finally:
        _stop(proc)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_artifacts_on_s3_publish_atomically_with_checksums(s3):
    import boto3

    root = f"s3://{BUCKET}/storage-test"
    data = b'{"frames": 240}\n'
    ref = files.write_bytes_atomic(files.join(root, "a", "report.json"), data)
    assert files.exists(ref.url) and files.read_bytes(ref.url) == data
    assert files.verify(ref, deep=True) and files.sha256_file(ref.url)[0] == ref.sha256

    # A writer that fails half-way publishes nothing: the object appears whole or not at all.
    half = files.join(root, "a", "segment.mp4")
    with pytest.raises(RuntimeError), files.atomic_output(half) as tmp:
        Path(tmp).write_bytes(b"\0" * 1000)
        raise RuntimeError("encoder died")
    assert not files.exists(half)

    # The catalog works on S3 and catches an artifact changed behind its back.
    catalog = Catalog(root)
    catalog.record("step", "1", {"p": 1}, {"in": "abc"}, [ref])
    assert catalog.lookup("step", "1", {"p": 1}, {"in": "abc"}).outputs == [ref]
    boto3.client("s3").put_object(Bucket=BUCKET, Key="storage-test/a/report.json", Body=b'{"frames": 241}\n')
    assert files.verify(ref) and not files.verify(ref, deep=True)  # same size, other bytes


@pytest.fixture(scope="module")
def services(s3, tmp_path_factory):
    """`prefect server start` (SQLite), a Dask scheduler and two worker processes (GPU=1 each)
    configured as the lab image's are (deploy/dask.yaml: glibc's malloc left adaptive, the
    processing steps preloaded)."""
    home = tmp_path_factory.mktemp("services")
    api_port, sched_port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{api_port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
               PREFECT_UI_ENABLED="false", PREFECT_API_URL=api, SINGINGHEAD_DASK_GPU_RESOURCE="true",
               PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS="2",  # as docker-compose.yml sets it
               DASK_CONFIG=str(DEPLOY))
    logs = [open(home / f"{name}.log", "wb") for name in ("prefect", "scheduler", "worker0", "worker1")]  # noqa: SIM115
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                               str(api_port)], env=env, stdout=logs[0], stderr=logs[0])
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(sched_port),
                                  "--dashboard-address", ":0"], env=env, stdout=logs[1], stderr=logs[1])
    address = f"tcp://127.0.0.1:{sched_port}"
    workers = [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--resources", "GPU=1",
                                 "--memory-limit", "4GB", "--dashboard-address", ":0"], env=env, stdout=log,
                                stderr=log) for log in logs[2:]]
    try:
        _wait_http(api + "/health", 120, server)
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)  # each imports the steps first
        yield {"api": api, "address": address, "home": home}
    finally:
        _stop(*workers, scheduler, server)


@pytest.fixture(scope="module")
def served(services):
    """`singinghead serve` against the services: the lab's deployments, run by a serving process."""
    import asyncio

    from prefect.client.orchestration import get_client

    from singinghead.flows.deployments import PROCESS, RELEASE, TRAIN

    env = dict(os.environ, PREFECT_API_URL=services["api"], SINGINGHEAD_DASK_ADDRESS=services["address"],
               SINGINGHEAD_DASK_GPU_RESOURCE="true", PREFECT_HOME=str(services["home"] / "serve"),
               PREFECT_RUNNER_POLL_FREQUENCY="2",  # looks for scheduled runs every 2 s (default 10)
               **ORCHESTRATION_FIT_STEPS)  # read by the flows it serves
    log = open(services["home"] / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "singinghead.cli", "serve"], env=env, stdout=log, stderr=log)

    async def registered():
        async with get_client() as client:
            return {name: await client.read_deployment_by_name(name) for name in (PROCESS, RELEASE, TRAIN)}

    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        deadline = time.monotonic() + 120
        with temporary_settings({PREFECT_API_URL: services["api"]}):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"singinghead serve exited: {(services['home'] / 'serve.log').read_text()}")
                try:
                    found = asyncio.run(registered())
                    break
                except Exception:  # not registered yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        yield found
    finally:
        _stop(proc)


def test_workers_run_with_the_lab_images_dask_configuration(services):
    """deploy/dask.yaml reached both workers: the steps were imported before they registered, and
    the nanny did not set MALLOC_TRIM_THRESHOLD_ (it would, without the file)."""
    from distributed import Client

    def _worker_state() -> dict:  # local: sent by value (the workers cannot import this module)
        import os
        import sys

        return {"preloaded": [m for m in ("singinghead.tasks.crop", "singinghead.tasks.flame_fit")
                              if m in sys.modules], "roma": "roma" in sys.modules,
                "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}

    with Client(services["address"], timeout=30) as client:
        states = client.run(_worker_state)
    assert len(states) == 2
    for state in states.values():
        assert state == {"preloaded": ["singinghead.tasks.crop", "singinghead.tasks.flame_fit"], "roma": False,
                         "MALLOC_TRIM_THRESHOLD_": None}


def test_the_lab_deployments_take_typed_parameters(served):
    from singinghead.flows.deployments import PROCESS, RELEASE, TRAIN

    def schema(name):
        return served[name].parameter_openapi_schema["properties"]

    assert schema(PROCESS)["session_dir"]["type"] == schema(PROCESS)["out"]["type"] == "string"
    assert schema(RELEASE)["sources"] == {**schema(RELEASE)["sources"], "type": "array", "items": {"type": "string"}}
    assert schema(RELEASE)["seed"]["type"] == "integer"
    assert {"type": "integer"} in schema(TRAIN)["max_steps"]["anyOf"]
    assert all(served[name].enforce_parameter_schema for name in (PROCESS, RELEASE, TRAIN))
    # Runs import the flows by module, as the Dask workers import their tasks.
    assert served[PROCESS].entrypoint == "singinghead.flows.process_session.process_session"


def _worker_pids(address: str) -> dict[str, int]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return client.run(os.getpid)


async def _runs(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return flow_run, tasks


def test_process_session_on_real_services_s3_gpu_limit_and_a_killed_worker(services, served, short_session_copy,
                                                                           monkeypatch):
    """process_session started as lab staff start it: through the process-session deployment that
    `singinghead serve` registered on the Prefect server; tasks on the Dask scheduler, output on
    S3, a tag concurrency limit of one GPU task; one worker is killed (SIGKILL, by pid) while it
    holds a crop task: Dask hands the task to the other worker, the run finishes every take, a
    re-run has nothing left to do, and every catalogued artifact is whole and listed once.
    The worker killed is the one whose crop waits for the GPU slot: killing the slot's holder
    leaves the slot taken until its lease runs out, which Prefect's task engine fixes at 60 s, so
    the run would wait a minute for Prefect rather than test Dask's recovery (it did, at random,
    in earlier runs of this test: 110 s against 180 s)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from singinghead.flows.deployments import PROCESS
    from singinghead.flows.process_session import run_process_session

    session_copy = short_session_copy
    monkeypatch.setenv("SINGINGHEAD_DASK_GPU_RESOURCE", "true")
    for name, value in ORCHESTRATION_FIT_STEPS.items():  # as the served flows have them (the re-run below)
        monkeypatch.setenv(name, value)
    out = f"s3://{BUCKET}/processed"

    async def state(flow_run_id):
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    with temporary_settings({PREFECT_API_URL: services["api"]}):
        async def limit():
            async with get_client() as client:
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="tag:gpu", limit=1))
        asyncio.run(limit())

        pids = _worker_pids(services["address"])
        started = run_deployment(PROCESS, parameters={"session_dir": str(session_copy), "out": out}, timeout=0)
        killed = None
        deadline = time.monotonic() + 300
        ingested = False
        while killed is None and time.monotonic() < deadline and not asyncio.run(state(started.id)).is_final():
            time.sleep(0.2)
            ingested = ingested or len(Catalog(out).entries("ingest")) == 2
            if ingested:  # ingest is over: each worker holds a crop task (no take has audio to do yet)
                busy = [w for w, keys in _processing(services["address"]).items() if keys]
                if len(busy) == 2 and not Catalog(out).entries("crop"):
                    killed = _slot_waiter([pids[w] for w in busy])
                    os.kill(killed, signal.SIGKILL)
        assert killed is not None, "no crop task was seen on each worker"
        deadline = time.monotonic() + 1200
        while not asyncio.run(state(started.id)).is_final() and time.monotonic() < deadline:
            time.sleep(1)
        flow_run, task_runs = asyncio.run(_runs(str(started.id)))
        second_direct = run_process_session(session_copy, out, dask_address=services["address"])
    # The run, served by `singinghead serve`, absorbed the kill: Dask re-ran the lost crop on the
    # surviving worker, so it finished both takes and the re-run found everything done.
    assert flow_run.state.is_completed(), (flow_run.state, (services["home"] / "serve.log").read_text()[-4000:])
    assert flow_run.deployment_id == served[PROCESS].id and flow_run.parameters["out"] == out
    report = json.loads(files.read_bytes(files.join(out, "sessions", "sample007", "ingest_report.json")))
    assert {t["take_id"]: t["status"] for t in report["takes"]} == {"take01": "ok", "take02": "ok"}
    index = json.loads(files.read_bytes(files.join(out, "sessions", "sample007", "processed.json")))
    assert sorted(index["takes"]) == ["take01", "take02"] and all(t["segments"] for t in index["takes"].values())
    assert second_direct["submitted"] == second_direct["crop_submitted"] == second_direct["audio_submitted"] == []
    assert second_direct["flame_submitted"] == [] and second_direct["takes"] == {"take01": "ok", "take02": "ok"}
    names = {r.name for r in task_runs}
    assert {"ingest-take01", "ingest-take02", "crop-take01", "crop-take02"} <= names

    # At most one GPU-tagged task ran at a time (tag limit 1), judged by the server's records.
    spans = sorted((r.start_time, r.end_time) for r in task_runs
                   if "gpu" in r.tags and r.start_time is not None and r.end_time is not None)
    assert len(spans) >= 4
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two GPU-tagged tasks overlapped"

    # Nothing lost, duplicated or half-written: every catalogued artifact is whole, listed once.
    catalog = Catalog(out)
    urls = []
    for step in ("ingest", "crop", "audio", "flame_frames", "flame_sequence"):
        for entry in catalog.entries(step):
            for ref in entry.outputs:
                assert files.verify(ref, deep=True), ref.url
                urls.append(ref.url)
    assert len(urls) == len(set(urls)) and len(urls) > 10


def _slot_waiter(pids: list[int]) -> int:
    """Of worker processes that each hold a crop task, the one whose crop waits for the GPU slot:
    the one using the least CPU over a second, with its children (the slot's holder decodes,
    detects faces and runs its ffmpeg encoders)."""
    import psutil

    def cpu_s(pid: int) -> float:
        worker = psutil.Process(pid)
        t = worker.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system  # encoders that have exited too
        for child in worker.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # an encoder that ended meanwhile
                total += sum(child.cpu_times()[:2])
        return total

    before = {pid: cpu_s(pid) for pid in pids}
    time.sleep(1.0)
    return min(pids, key=lambda pid: cpu_s(pid) - before[pid])


def _processing(address: str) -> dict[str, list[str]]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return {w: [str(k) for k in keys] for w, keys in client.processing().items()}
