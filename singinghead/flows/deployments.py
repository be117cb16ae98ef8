"""The lab's deployments: what `singinghead serve` registers with the Prefect server, so staff start
runs from the Prefect UI (or `prefect deployment run NAME --param …`) instead of a shell.

Served flows run in subprocesses of the serving process, which therefore holds the lab's settings
(PREFECT_API_URL, SINGINGHEAD_DASK_ADDRESS, object-store credentials); process-session sends its
steps to the Dask scheduler those settings name (a local cluster without one).
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from singinghead.flows.build_release import build_release
from singinghead.flows.process_session import process_session
from singinghead.flows.train import train_unisinger

#: "flow/deployment" names, as `prefect deployment run` and the UI show them.
PROCESS = "process-session/process-session"
RELEASE = "build-release/build-release"
TRAIN = "train-unisinger/train-unisinger"


def deployments() -> list[RunnerDeployment]:
    """One deployment per flow; parameters typed from the flows' signatures (checked on submit).
    Entry points are module paths: a run imports `singinghead.flows…` as the Dask workers do, so
    what it sends them (task functions, the run's context) unpickles there (a file-path entry
    point loads the flow under a private module name no worker can import)."""
    tags, entry = ["singinghead"], EntrypointType.MODULE_PATH
    return [
        process_session.to_deployment(  # its task runner (the settings' scheduler) is on the flow
            "process-session", tags=tags, entrypoint_type=entry,
            description="A capture session folder → processed takes (parameters: session_dir, out)."),
        build_release.to_deployment(
            "build-release", tags=tags, entrypoint_type=entry,
            description="Processed sessions (sources) → a release version at out."),
        train_unisinger.to_deployment(
            "train-unisinger", tags=tags, concurrency_limit=1, entrypoint_type=entry,
            description="Train UniSinger on a release (one training run at a time per server)."),
    ]


def serve_deployments(limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted (`limit`: runs at once)."""
    serve(*deployments(), limit=limit, print_starting_message=True)
