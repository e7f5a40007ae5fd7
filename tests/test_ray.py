"""The Ray executor against a local Ray cluster (skipped where Ray is not installed)."""

import os

import pytest
from helpers import tiny_fields

from scaling.sweeps.executors import RayExecutor, execute_run
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Budget, Sweep, grid
from scaling.sweeps.store import COMPLETED, Store

ray = pytest.importorskip("ray")


def test_runs_are_ray_tasks_that_hold_their_resources_and_retry_crashed_workers(tmp_path, data_dir):
    ray.init(num_cpus=2, resources={"slice": 1}, include_dashboard=False, log_to_driver=False)
    crashed, holder, trained = tmp_path / "crashed", tmp_path / "slice-holder", tmp_path / "trained"
    trained.mkdir()

    def crash_once_then_train(config, workdir):
        if config.seed == 1 and not crashed.exists():
            crashed.touch()
            os._exit(1)  # the worker process dies; Ray runs the task again
        # the one "slice": a second task holding it now finds this file and fails instead of training
        fd = os.open(holder, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        try:
            outcome = execute_run(config, workdir)
            (trained / str(config.seed)).write_text(str(os.getpid()))
        finally:
            os.close(fd)
            os.unlink(holder)
        return outcome

    runs = grid(["clip"], ["mu"], [Budget.steps(10)], seeds=[0, 1], fields=tiny_fields(data_dir),
                resources={"slice": 1})
    sweep = Sweep("ray", runs)
    try:
        executor = RayExecutor(2, max_retries=1, job=crash_once_then_train)
        counts = run_sweep(sweep, tmp_path / "runs", executor, out=lambda _: None, poll_s=0.1)
    finally:
        ray.shutdown()
    assert counts[COMPLETED] == 2 and crashed.exists()
    store = Store(tmp_path / "runs", "ray")
    assert all(store.attempts(r.run_id)[-1]["status"] == "completed" for r in sweep.runs)
    pids = [int((trained / str(seed)).read_text()) for seed in (0, 1)]  # each trained, in a Ray worker
    assert os.getpid() not in pids
