"""Ahead-of-time planning of runs on TPU slices, from a CPU host.

With libtpu installed, ``jax.experimental.topologies`` gives compile-only devices of a TPU topology. For
each run the REAL sharded train step (``scaling.step.build_training``, on the model
state of ``scaling.state``) is lowered with abstract inputs and compiled for those devices; XLA's memory
analysis gives the per-chip bytes, and the cost analysis of the same step compiled with every product
outside loops gives the FLOPs and an estimated step time. From those: whether the run fits the chip's HBM,
the steps of its budget, chip-hours, and the implied MFU. Without a mesh, candidate meshes are compiled,
those that fit are ranked by the cost of a shallow step (``RANKING_BLOCKS``), and the close ones are
costed at the whole depth, the fastest kept. Results are cached per run id, topology and mesh request, and
per compile.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from scaling.config import ConfigError, parse_arg
from scaling.models.sizes import LADDER, get_size
from scaling.objectives import build_objective, validate_config
from scaling.objectives.base import Objective
from scaling.sharding import MESH_AXES, MeshError, resolve_mesh_shape
from scaling.state import ModelState
from scaling.step import build_training
from scaling.workdir import flatten, read_json, write_json_atomic

GIB = 2**30
HEADROOM = 0.9  # a run fits when it needs at most this fraction of the chip's HBM
INSTALL_HINT = 'pip install -e ".[tpu]"'
# XLA's TPU compiler turns a product sharded with FSDP (a weight gradient and its reduce-scatter, or a
# product and its all-gather) into a loop over shards, a "windowed einsum", and its cost analysis counts
# a loop body once: FLOPs and time are read from a compile without them (and without scanned stacks).
EVERY_PRODUCT_COUNTED = {
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
}
UNCOSTED_CALL = 'custom_call_target="ConcatBitcast"'
OUT_OF_MEMORY = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\)")


class PlanError(ConfigError):
    """A topology, mesh or environment the planner cannot work with; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: HBM per chip, peak bfloat16 FLOP/s per chip, TensorCores per chip."""

    hbm_bytes: int
    peak_flops: float
    cores_per_chip: int  # slice names such as v5p-64 count TensorCores: 2 per chip on v4 and v5p
    dims: int  # torus dimensions of its topology names (v5p:4x4x4, v5e:4x4)


CHIPS: dict[str, Chip] = {
    "v4": Chip(32 * GIB, 275e12, 2, 3),
    "v5e": Chip(16 * GIB, 197e12, 1, 2),
    "v5p": Chip(95 * GIB, 459e12, 2, 3),
    "v6e": Chip(32 * GIB, 918e12, 1, 2),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: generation and chip grid, e.g. ``v5p`` 4x4x2 for the slice name ``v5p-64``."""

    generation: str
    grid: tuple[int, ...]

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def name(self) -> str:
        """The slice name, as gcloud spells it (v5p-64: 32 chips of 2 TensorCores)."""
        return f"{self.generation}-{self.chips * self.chip.cores_per_chip}"

    @property
    def topology_name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.grid))}"


def _chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The most cube-like power-of-two grid of ``chips`` chips: v5p 32 -> 2x4x4, v5e 8 -> 2x4; sides of 1
    go last (v5p 4 -> 2x2x1), as TPU topology names write them."""
    grid = [1] * dims
    for _ in range(chips.bit_length() - 1):
        grid[grid.index(min(grid))] *= 2
    return tuple(sorted(grid, key=lambda side: (side == 1, side)))


def parse_topology(text: str) -> Topology:
    """``v5p-64`` (slice name: TensorCores for v4/v5p, chips for v5e/v6e) or ``v5p:4x4x2`` (chip grid)."""
    known = ", ".join(CHIPS)
    match = re.fullmatch(r"([a-z0-9]+)(?:-(\d+)|:(\d+(?:x\d+)+))", text.strip())
    generation = ALIASES.get(match.group(1), match.group(1)) if match else None
    if generation not in CHIPS:
        raise PlanError(
            f"--topology: {text!r} is not a TPU slice; give <generation>-<cores> such as v5p-64 or a "
            f"chip grid such as v5p:4x4x2, with generation one of {known}"
        )
    chip = CHIPS[generation]
    if match.group(3):
        grid = tuple(int(side) for side in match.group(3).split("x"))
        if len(grid) != chip.dims:
            raise PlanError(f"--topology: {generation} grids have {chip.dims} sides, got {text!r}")
        return Topology(generation, grid)
    cores = int(match.group(2))
    chips, rest = divmod(cores, chip.cores_per_chip)
    if rest or chips < 1 or chips & (chips - 1):
        raise PlanError(
            f"--topology: {text!r} has no slice shape; {generation}-N takes N = "
            f"{chip.cores_per_chip} x a power of two chips (e.g. {generation}-{8 * chip.cores_per_chip})"
        )
    return Topology(generation, _chip_grid(chips, chip.dims))


def topology_devices(topology: Topology) -> list[jax.Device]:
    """Compile-only devices of the slice (needs libtpu, not a TPU)."""
    if importlib.util.find_spec("libtpu") is None:
        raise PlanError(f"planning for TPU needs libtpu; install it with {INSTALL_HINT}")
    from jax.experimental import topologies

    # Compiling touches no chip, so planners may run side by side (libtpu otherwise locks the host).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=topology.topology_name
        )
    except Exception as error:  # libtpu raises RuntimeError/XlaRuntimeError with its own message
        raise PlanError(f"--topology: libtpu cannot describe {topology.topology_name} ({error})") from None
    return list(description.devices)


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,fsdp=16"`` -> ``{"data": 2, "fsdp": 16, "tensor": 1}`` (unnamed axes are 1)."""
    try:
        sizes = {key: int(value) for key, value in parse_arg(text).items()}
    except ValueError:
        raise PlanError(f"--mesh: {text!r} needs integer sizes, e.g. data=2,fsdp=16") from None
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise PlanError(f"--mesh: unknown axes {unknown}; use {', '.join(MESH_AXES)}")
    return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


# --- one compile -------------------------------------------------------------------------------------


def compile_train_step(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                       objective: Objective | None = None,
                       compiler_options: dict[str, Any] | None = None) -> tuple[Any, ModelState]:
    """The run's real train step compiled for ``devices`` (mesh from ``config.mesh``) with XLA's
    ``compiler_options``; returns (compiled executable, the model state it was built on)."""
    # Outside the mesh context: optax builds the optimizer-state shardings eagerly, and compile-only
    # devices cannot run anything.
    training = build_training(config, devices=devices, objective=objective)
    with jax.set_mesh(training.mesh):
        compiled = training.step.lower(*training.abstract_args()).compile(compiler_options=compiler_options)
    return compiled, training.state


def step_cost(compiled) -> dict[str, float]:
    """XLA's FLOPs and estimated seconds of one device's program. The TPU cost model prices each
    ``ConcatBitcast`` (a concatenation of slices already in place, no data moved) at -1 s; those are
    counted as free."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    uncosted = compiled.as_text().count(UNCOSTED_CALL)
    return {"flops": float(cost["flops"]), "optimal_seconds": float(cost["optimal_seconds"]) + uncosted}


def counted_cost(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                 objective: Objective | None = None) -> dict[str, float]:
    """The step cost of ``config`` with every product counted. XLA's cost analysis counts a loop body
    once and gives no time for a loop, so this compiles the step unrolled (scanned stacks are loops) and
    without windowed einsums (``EVERY_PRODUCT_COUNTED``). The time estimate is not additive over depth
    (memory-space assignment changes with the program), so the whole depth is compiled."""
    unrolled = config.copy_and_resolve_references()
    unrolled.model.scan_layers = False
    objective = None if objective is None else type(objective)(unrolled)
    return step_cost(compile_train_step(unrolled, devices, objective, EVERY_PRODUCT_COUNTED)[0])


@contextlib.contextmanager
def stacks_cut_to(blocks: int | None):
    """Inside, every size of the ladder has at most ``blocks`` blocks (None: sizes as they are)."""
    saved = dict(LADDER)
    if blocks is not None:
        LADDER.update({name: dataclasses.replace(size, depth=min(size.depth, blocks))
                       for name, size in saved.items()})
    try:
        yield
    finally:
        LADDER.update(saved)


def step_memory(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                objective: Objective | None = None) -> tuple[int, int, int, int]:
    """Per-device bytes of the compiled step (arguments, temporaries, outputs not aliased to arguments,
    generated code). XLA refuses to compile a step whose temporaries alone exceed the chip's memory; its
    message gives them, and the other parts count as 0 (the total is a lower bound)."""
    try:
        compiled, _ = compile_train_step(config, devices, objective)
    except jax.errors.JaxRuntimeError as error:
        needed = OUT_OF_MEMORY.search(str(error))
        if needed is None:
            raise
        return 0, int(float(needed.group(1)) * 1024 ** (1 + "KMGT".index(needed.group(2)))), 0, 0
    memory = compiled.memory_analysis()
    outputs = memory.output_size_in_bytes - memory.alias_size_in_bytes
    return (memory.argument_size_in_bytes, memory.temp_size_in_bytes, outputs,
            memory.generated_code_size_in_bytes)


def mesh_name(config: ml_collections.ConfigDict) -> str:
    """``data=4,fsdp=8,tensor=1``: the config's mesh, as plans show it."""
    return ",".join(f"{axis}={config.mesh[axis]}" for axis in MESH_AXES)


def memory_row(config: ml_collections.ConfigDict, topology: Topology, devices: Sequence[jax.Device],
               objective: Objective | None = None) -> dict[str, Any]:
    """Per-chip memory of one step of ``config`` on ``topology`` as configured, and whether it fits."""
    start = time.perf_counter()
    arguments, temporaries, outputs, code = step_memory(config, devices, objective)
    total = arguments + temporaries + outputs + code
    hbm_per_device = topology.chip.hbm_bytes * topology.chips / len(devices)
    return {
        "mesh": mesh_name(config),
        "arguments_gib": arguments / GIB,
        "temporaries_gib": temporaries / GIB,
        "outputs_gib": outputs / GIB,
        "total_gib": total / GIB,
        "hbm_gib": hbm_per_device / GIB,
        "fits": total <= HEADROOM * hbm_per_device,
        "dominant": "temporaries (activations)" if temporaries >= arguments else "arguments (state)",
        "compile_s": time.perf_counter() - start,
    }


def cost_row(config: ml_collections.ConfigDict, topology: Topology, devices: Sequence[jax.Device],
             objective: Objective | None = None, blocks: int | None = None) -> dict[str, Any]:
    """XLA's FLOPs and estimated time of one step of ``config`` on ``topology`` with every product
    counted (``counted_cost``), against the analytic count; with ``blocks``, of the step with every stack
    cut to that many blocks (a mesh search ranks candidates on it)."""
    start = time.perf_counter()
    with stacks_cut_to(blocks):
        objective = build_objective(config) if objective is None else type(objective)(config)
        cost = counted_cost(config, devices, objective)
        analytic_flops = objective.train_flops_per_example() * config.batch_size
    # Cost analysis describes one device's SPMD program; a v4 chip shows up as two devices.
    xla_flops = cost["flops"] * len(devices)
    step_s = cost["optimal_seconds"]
    return {
        "analytic_flops_per_step": analytic_flops,
        "xla_flops_per_step": xla_flops,
        "xla_over_analytic": xla_flops / analytic_flops,
        "step_s": step_s,
        "mfu": analytic_flops / (step_s * topology.chips * topology.chip.peak_flops),
        "compile_s": time.perf_counter() - start,
    }


UNCOSTED = {"analytic_flops_per_step": math.nan, "xla_flops_per_step": math.nan,
            "xla_over_analytic": math.nan, "step_s": math.nan, "mfu": math.nan, "compile_s": 0.0}


def measure(config: ml_collections.ConfigDict, topology: Topology, devices: Sequence[jax.Device],
            objective: Objective | None = None) -> dict[str, Any]:
    """Per-chip memory of one step of ``config`` on ``topology`` (``memory_row``) and its FLOPs and
    estimated time at the whole depth (``cost_row``), compile time of both."""
    memory = memory_row(config, topology, devices, objective)
    cost = cost_row(config, topology, devices, objective)
    return {**memory, **cost, "compile_s": memory["compile_s"] + cost["compile_s"]}


# --- mesh search -------------------------------------------------------------------------------------


def candidate_meshes(chips: int, batch_size: int, width: int) -> list[dict[str, int]]:
    """FSDP over every chip; data x FSDP with FSDP groups of 8; pure data parallelism; and, for widths
    of 1024 and more, tensor parallelism of 4 under FSDP. Only meshes whose batch shards divide the
    batch."""
    meshes = [{"data": 1, "fsdp": chips, "tensor": 1}]
    if chips > 8:
        meshes.append({"data": chips // 8, "fsdp": 8, "tensor": 1})
    meshes.append({"data": chips, "fsdp": 1, "tensor": 1})
    if width >= 1024 and chips >= 8:
        meshes.append({"data": 1, "fsdp": chips // 4, "tensor": 4})
    unique = {tuple(m.values()): m for m in meshes if batch_size % (m["data"] * m["fsdp"]) == 0}
    return list(unique.values())


def check_mesh(mesh: dict[str, int], topology: Topology) -> None:
    try:
        resolve_mesh_shape(mesh, topology.chips)
    except MeshError as error:
        raise PlanError(f"--mesh: {error} ({topology.name} has {topology.chips} chips)") from None


def with_layout(config: ml_collections.ConfigDict, mesh: dict[str, int], remat: str):
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh)
    config.model.remat = remat
    return config


REMAT_LADDER = ("none", "dots", "full")  # less memory, more recompute, left to right
# A mesh search first costs the candidates that fit with every stack cut to RANKING_BLOCKS blocks (1 to 8
# minutes a compile at sizes g and G on v5p-64, against 3 to 11 for the whole depth), and costs at the whole
# depth only those within RANKING_BAND of the fastest of them: a shallow ranking can invert close calls.
RANKING_BLOCKS = 4
RANKING_BAND = 1.10


def choose_mesh(config: ml_collections.ConfigDict, topology: Topology, devices: Sequence[jax.Device],
                mesh: dict[str, int] | None = None, memory: Callable[..., dict[str, Any]] = memory_row,
                cost: Callable[..., dict[str, Any]] = cost_row) -> dict[str, Any]:
    """Measures the memory (with ``memory``) of the given mesh, or of every candidate mesh, at the
    config's remat policy and, when none fits, at the next policies of ``REMAT_LADDER``. Of several that
    fit, those whose step at ``RANKING_BLOCKS`` blocks is within ``RANKING_BAND`` of the fastest are
    costed (with ``cost``) at the whole depth, and the fastest of those is kept. Says why."""
    if mesh is not None:
        check_mesh(mesh, topology)
        candidates = [mesh]
    else:
        candidates = candidate_meshes(topology.chips, config.batch_size, get_size(config.size).width)
        if not candidates:
            raise PlanError(
                f"batch_size {config.batch_size} does not split over any candidate mesh of {topology.chips} "
                f"chips; use a multiple of {topology.chips} or give --mesh"
            )
    tried = []
    for remat in REMAT_LADDER[REMAT_LADDER.index(config.model.remat):]:
        for candidate in candidates:
            layout = with_layout(config, candidate, remat)
            validate_config(layout, topology.chips)
            tried.append((layout, {**memory(layout, topology, devices), "remat": remat}))
        if any(row["fits"] for _, row in tried):
            break
    label = lambda row: f"{row['mesh']} remat={row['remat']}"
    compile_s = sum(row["compile_s"] for _, row in tried)
    fitting = [(layout, row) for layout, row in tried if row["fits"]]
    if not fitting:
        layout, best = min(tried, key=lambda pair: pair[1]["total_gib"])
        others = ", ".join(f"{label(row)} {row['total_gib']:.0f} GiB" for _, row in tried if row is not best)
        reason = "does not fit" if len(tried) == 1 else f"none of {len(tried)} fit; least memory shown"
        reason += f" (others: {others})" if others else ""
        return {**best, **UNCOSTED, "mesh_reason": reason, "compile_s": compile_s}

    finalists, ranked_out = fitting, []
    if len(fitting) > 1:
        shallow = [cost(layout, topology, devices, blocks=RANKING_BLOCKS) for layout, _ in fitting]
        compile_s += sum(row["compile_s"] for row in shallow)
        fastest = min(row["step_s"] for row in shallow)
        slower = [row["step_s"] / fastest for row in shallow]
        finalists = [pair for pair, ratio in zip(fitting, slower, strict=True) if ratio <= RANKING_BAND]
        ranked_out = [f"{label(row)} +{100 * (ratio - 1):.0f}%"
                      for (_, row), ratio in zip(fitting, slower, strict=True) if ratio > RANKING_BAND]
    costed = [(row, cost(layout, topology, devices)) for layout, row in finalists]
    compile_s += sum(whole["compile_s"] for _, whole in costed)
    (best, whole), *others = sorted(costed, key=lambda pair: pair[1]["step_s"])
    if len(tried) == 1:
        reason = "mesh and remat given"
    elif len(fitting) == 1:
        reason = f"the only one of {len(tried)} that fits"
    else:
        reason = f"fastest of {len(fitting)} that fit"
        reason += "".join(f"; {label(row)} {1e3 * other['step_s']:.1f} ms" for row, other in others)
        if ranked_out:
            reason += f"; slower at {RANKING_BLOCKS} blocks: " + ", ".join(ranked_out)
    return {**best, **whole, "mesh_reason": reason, "compile_s": compile_s}


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


# --- many runs ---------------------------------------------------------------------------------------

# Fields that change how long a run is, what it logs or how it is evaluated, not the compiled step.
NOT_IN_STEP = ("total_steps", "optim.warmup_steps", "checkpoint_every", "log_every", "keep_checkpoints")


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


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(rows),
        "fit": sum(row["fits"] for row in rows),
        "chip_hours": sum(row["chip_hours"] for row in rows if row["fits"]),
        "compile_s": sum(row["compile_s"] for row in rows if not row["cached"]),
    }


COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("run_id", "run", str),
    ("mesh", "mesh", str),
    ("remat", "remat", str),
    ("total_gib", "GiB/chip", lambda v: f"{v:.1f}"),
    ("fits", "fits", lambda v: "yes" if v else "NO"),
    ("dominant", "largest", lambda v: v.split()[0]),
    ("xla_over_analytic", "XLA/analytic", lambda v: f"{v:.2f}"),
    ("step_s", "ms/step", lambda v: f"{1e3 * v:.1f}"),
    ("steps", "steps", str),
    ("chip_hours", "chip-h", lambda v: f"{v:.2f}"),
    ("mfu", "MFU", lambda v: f"{v:.2f}"),
    ("compile_s", "compile s", lambda v: f"{v:.0f}"),
    ("mesh_reason", "mesh choice", str),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cells = [[header for _, header, _ in COLUMNS]]
    cells += [[fmt(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                           strict=True)))
             for line in cells]
    return "\n".join(lines)


def write_outputs(rows: Sequence[dict[str, Any]], summary: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """``<stem>.csv`` (one row per run) and ``<stem>.json`` (rows and totals)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"runs": list(rows), "totals": summary}, indent=1))
    return csv_path, json_path
