"""Planning many runs: runs that compile the same step share one compile, and every measurement and every
run's plan is kept in a cache folder, so a planning session stopped part way resumes where it was."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from scaling.plan.compile import cost_row, memory_row
from scaling.plan.meshes import check_mesh, choose_mesh
from scaling.plan.tpus import Topology, topology_devices
from scaling.sharding import MESH_AXES
from scaling.workdir import flatten, read_json, write_json_atomic


def cached(cache_dir: Path, function: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``function`` (``memory_row`` or ``cost_row``), keeping each measurement in ``cache_dir``: a mesh
    search stopped part way (one candidate of a 1B-parameter model takes tens of minutes) resumes at the
    candidate it was on."""

    def measure_once(config: ml_collections.ConfigDict, topology: Topology, devices: Sequence[jax.Device],
                     **options: Any) -> dict[str, Any]:
        key = f"{function.__name__} {step_key(config)} {topology.name} {sorted(options.items())}"
        path = cache_dir / f"step-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        if (row := read_json(path)) is not None:
            return row
        row = function(config, topology, devices, **options)
        write_json_atomic(path, row)
        return row

    return measure_once


def run_row(run_id: str, config: ml_collections.ConfigDict, topology: Topology,
            step: dict[str, Any]) -> dict[str, Any]:
    """A run's plan from its measured step: steps of its budget, chip-hours."""
    return {
        "run_id": run_id,
        "objective": config.objective,
        "size": config.size,
        "batch_size": config.batch_size,
        "topology": topology.name,
        "chips": topology.chips,
        **step,
        "steps": config.total_steps,
        "chip_hours": config.total_steps * step["step_s"] * topology.chips / 3600,
    }


# Fields that change how long a run is, what it logs or how it is evaluated, not the compiled step.
NOT_IN_STEP = ("total_steps", "optim.warmup_steps", "optim.warmup_examples", "checkpoint_every", "log_every",
               "keep_checkpoints", "keep_eval_checkpoints")


def step_key(config: ml_collections.ConfigDict) -> str:
    """Runs with equal keys compile the same train step (budgets of one size share a compile)."""
    fields = flatten(json.loads(config.to_json()))
    kept = {k: v for k, v in fields.items() if k not in NOT_IN_STEP and not k.startswith("eval.")}
    return json.dumps(kept, sort_keys=True)


def _cache_key(run_id: str, topology: Topology, mesh: dict[str, int] | None) -> str:
    mesh_label = "auto" if mesh is None else "-".join(f"{a}{mesh[a]}" for a in MESH_AXES)
    return f"{run_id}.{topology.name}.{mesh_label}.json"


def plan_runs(runs: Sequence[tuple[str, ml_collections.ConfigDict]], topology: Topology,
              cache_dir: str | Path, mesh: dict[str, int] | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Plans each (run id, config). Runs that differ only in length share one compile; a run planned
    before for this topology and mesh request, or a candidate mesh measured before, is read from
    ``cache_dir`` instead."""
    if mesh is not None:
        check_mesh(mesh, topology)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    devices: list[jax.Device] | None = None
    steps: dict[str, dict[str, Any]] = {}
    rows = []
    for run_id, config in tqdm(runs, unit="run", disable=not progress, dynamic_ncols=True):
        path = cache_dir / _cache_key(run_id, topology, mesh)
        if path.is_file():
            rows.append({**json.loads(path.read_text()), "cached": True})
            continue
        key = step_key(config)
        if key in steps:
            step = {**steps[key], "compile_s": 0.0}
        else:
            devices = devices or topology_devices(topology)
            step = steps[key] = choose_mesh(config, topology, devices, mesh, cached(cache_dir, memory_row),
                                               cached(cache_dir, cost_row))
        row = run_row(run_id, config, topology, step)
        write_json_atomic(path, row)
        rows.append({**row, "cached": False})
    return rows
