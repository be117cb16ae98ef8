"""Takes flow independently: each take's next step starts as soon as its own step is done."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
from prefect import flow, task

from singinghead.flows.process_session import _step, progress, run_pipelines
from singinghead.flows.runtime import task_runner

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/


@task
def first_step(x: int) -> int:
    return x


@task
def signal(path: str) -> str:
    Path(path).write_text("the short take's second step ran")
    return path


@task
def wait_for(path: str, timeout_s: float) -> str:
    """A long step that ends only once the other take's second step has run."""
    end = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared: the other take waited for this one")
        time.sleep(0.1)
    return path


@task
def dask_priority() -> int:
    """The user priority Dask scheduled this task with (its priority tuple holds it negated)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    return -get_worker().state.tasks[thread_state.key].priority[0]


@task
def broken() -> None:
    raise ValueError("this take's video is unreadable")


def test_a_short_take_moves_on_while_a_long_one_is_still_running(tmp_path, prefect_harness):
    """Take A (two steps) and take B (one step that cannot finish before A's second step has run)
    on two Dask workers: with a stage barrier (every take's step 1 before any step 2) B would time
    out; with per-take pipelines both finish. A third take fails and is only recorded."""
    flag = str(tmp_path / "flag")
    submitted = {"one": [], "two": []}

    def short_take():
        yield from _step("s", "A", "one", lambda: None, lambda: first_step.submit(1), submitted)
        return (yield from _step("s", "A", "two", lambda: None, lambda: signal.submit(flag), submitted))

    def long_take():
        return (yield from _step("s", "B", "one", lambda: None, lambda: wait_for.submit(flag, 120.0), submitted))

    def failing_take():
        return (yield from _step("s", "C", "one", lambda: None, lambda: broken.submit(), submitted))

    def done_take():  # its outputs are catalogued already: nothing is submitted
        return (yield from _step("s", "D", "one", lambda: ["catalogued"], lambda: broken.submit(), submitted))

    @flow(task_runner=task_runner())  # the run's Dask cluster: two worker processes
    def takes() -> dict:
        return run_pipelines({"A": short_take(), "B": long_take(), "C": failing_take(), "D": done_take()})

    events = []
    with progress(lambda *event: events.append(event)):
        results = takes()
    assert results["A"] == {"status": "ok", "refs": flag} and results["B"] == {"status": "ok", "refs": flag}
    assert results["C"]["status"] == "failed" and "unreadable" in results["C"]["problem"]
    assert results["D"] == {"status": "ok", "refs": ["catalogued"]}
    # In the pipelines' order, not the finishing order (D finished first, B last): what the flow
    # computes from the results (the subject's mean shape, a catalog key) must not depend on timing.
    assert list(results) == ["A", "B", "C", "D"]
    assert sorted(submitted["one"]) == ["A", "B", "C"] and submitted["two"] == ["A"]
    # What the progress display showed, in order: A's second step went while B's first still ran.
    assert events.index(("s", "A", "two", "submitted")) < events.index(("s", "B", "one", "done"))
    assert ("s", "C", "one", "failed") in events and ("s", "D", "one", "up to date") in events


def test_a_pipelines_tasks_carry_its_dask_priority(prefect_harness):
    """Each pipeline's tasks reach Dask with its priority (the flow's light stage goes first),
    and a step's own priority (the flow's work left in a take) overrides its pipeline's."""
    submitted = {"one": []}

    def take(name: str, own: int | None = None):
        return (yield from _step("s", name, "one", lambda: None, lambda: dask_priority.submit(), submitted, own))

    @flow(task_runner=task_runner())
    def takes() -> dict:
        return run_pipelines({"long": take("long"), "short": take("short"), "plain": take("plain"),
                              "own": take("own", 7)}, {"long": 2, "short": 1, "own": 3})

    results = takes()
    assert {k: r["refs"] for k, r in results.items()} == {"long": 2, "short": 1, "plain": 0, "own": 7}


def test_the_work_left_in_a_take_shrinks_step_by_step():
    """Along a take's steps, in the flow's order, the work left only shrinks: so a take's crop
    outranks any take of the same length's later steps."""
    from singinghead.flows.process_session import STEPS, WORK_LEFT, work_left

    left = [work_left(10**7, s) for s in STEPS if s in WORK_LEFT]
    assert len(left) == 5 and all(a > b for a, b in zip(left, left[1:], strict=False))
