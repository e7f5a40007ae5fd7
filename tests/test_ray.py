"""The Ray executor against a local Ray cluster (skipped where Ray is not installed)."""

import json
import os
import time

import pytest
from helpers import tiny_fields

from scaling.sweeps.executors import RayExecutor, execute_run
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Budget, Sweep, grid
from scaling.sweeps.store import COMPLETED, Store

ray = pytest.importorskip("ray")


def test_runs_are_ray_tasks_that_hold_their_resources_and_retry_crashed_workers(tmp_path, data_dir):
    ray.init(num_cpus=2, resources={"slice": 1}, include_dashboard=False, log_to_driver=False)
    intervals, crashed = tmp_path / "intervals.jsonl", tmp_path / "crashed"

    def crash_once_then_train(config, workdir):
        if config.seed == 1 and not crashed.exists():
            crashed.touch()
            os._exit(1)  # the worker process dies; Ray runs the task again
        start = time.time()
        outcome = execute_run(config, workdir)
        with intervals.open("a") as f:
            f.write(json.dumps([start, time.time(), os.getpid()]) + "\n")
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
    (start_a, end_a, pid_a), (start_b, end_b, pid_b) = sorted(
        json.loads(line) for line in intervals.read_text().splitlines())
    assert end_a <= start_b and os.getpid() not in (pid_a, pid_b)  # one "slice": never both at once
