"""Two JAX processes (gloo CPU collectives, 2 devices each) run a sweep together, as TPU hosts do, and
train a fixed batch to the losses one process on one device gets.

Run as a script, this file is one of those processes:
    python tests/test_multiprocess.py PORT PROCESS_ID ROOT OUT DATA_DIR
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, load_experiment, random_batch

from scaling.schedule import learning_rates
from scaling.step import build_training
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import Budget, Sweep, make_run
from scaling.sweeps.store import Store

PROCESSES, LOCAL_DEVICES, BATCH, STEPS = 2, 2, 16, 3


def tiny_sweep(data_dir: str) -> Sweep:
    config = load_experiment("clip")
    config.data.name, config.data.data_dir = "scenes/32_small", data_dir
    config.batch_size, config.checkpoint_every, config.log_every = BATCH, 5, 5
    config.optim.warmup_steps, config.eval.num_points = 2, 0
    return Sweep("multihost", [make_run(config, Budget.steps(10))])


def process_batch(config, process_id: int) -> dict[str, np.ndarray]:
    """This process's rows of one fixed global batch."""
    rows = slice(process_id * BATCH // PROCESSES, (process_id + 1) * BATCH // PROCESSES)
    return {key: value[rows] for key, value in random_batch(config, BATCH).items()}


def fixed_batch_losses(config, batch: dict[str, np.ndarray], devices) -> list[float]:
    """Train-step losses on one fixed batch (this process's rows of it) over a data-parallel mesh.

    Unlike helpers.run_steps, nothing closes over the global batch, which multi-process jit forbids.
    """
    training = build_training(config, devices=devices)
    with jax.set_mesh(training.mesh):
        params, opt_state = training.init(config.seed)
        global_batch, losses = training.shard(batch), []
        rates = learning_rates(config.optim, config.total_steps, config.batch_size)
        for step in range(STEPS):
            params, opt_state, metrics = training.step(params, opt_state, global_batch, jnp.int32(step),
                                                       rates[step])
            losses.append(float(metrics["loss"]))
    return losses


def record_writes(root: Path) -> list[str]:
    """Names of the files under ``root`` (outside checkpoints/) this process writes or renames into place."""
    writes, original_open, original_replace = [], pathlib.Path.open, os.replace

    def note(path):
        path = Path(path).resolve()
        if path.is_relative_to(root) and "checkpoints" not in path.relative_to(root).parts:
            writes.append(path.name)

    def open_(self, mode="r", *args, **kwargs):
        if set(mode) & set("wax"):
            note(self)
        return original_open(self, mode, *args, **kwargs)

    def replace(src, dst, **kwargs):
        note(dst)
        return original_replace(src, dst, **kwargs)

    pathlib.Path.open, os.replace = open_, replace
    return writes


def process_main(port: str, process_id: str, root: str, out: str, data_dir: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=int(process_id))
    writes = record_writes(Path(root).resolve())
    sweep = tiny_sweep(data_dir)
    counts = run_sweep(sweep, root, multihost=True)
    losses = fixed_batch_losses(sweep.runs[0].config, process_batch(sweep.runs[0].config, int(process_id)),
                                jax.devices())
    Path(out).write_text(json.dumps({"counts": counts, "writes": writes, "losses": losses,
                                     "devices": [jax.device_count(), jax.local_device_count()]}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_run_a_sweep_together_and_only_process_0_writes(tmp_path, data_dir):
    root, port = tmp_path / "runs", free_port()
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
           "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, str(port), str(i), str(root), str(tmp_path / f"{i}.json"), data_dir],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(PROCESSES)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    reports = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(PROCESSES)]
    assert all(r["devices"] == [PROCESSES * LOCAL_DEVICES, LOCAL_DEVICES] for r in reports)

    sweep = tiny_sweep(data_dir)
    store = Store(root, sweep.name)
    run_dir = store.run_dir(sweep.runs[0].run_id)
    assert reports[0]["counts"]["completed"] == 1
    assert json.loads((run_dir / "result.json").read_text())["step"] == 10
    assert [a["event"] for a in store.attempts(sweep.runs[0].run_id)] == ["start", "end"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert {"config.json", "metrics.jsonl", "result.json", "spec.json", "attempts.jsonl",
            "results.csv"} <= set(reports[0]["writes"])
    assert reports[1]["writes"] == []  # process 1 trained too, but wrote nothing but its checkpoint shards

    config = sweep.runs[0].config
    single = fixed_batch_losses(config, random_batch(config, BATCH), jax.devices())  # one device
    assert reports[0]["losses"] == pytest.approx(single, rel=1e-5)
    assert reports[1]["losses"] == reports[0]["losses"]


if __name__ == "__main__":
    process_main(*sys.argv[1:])
