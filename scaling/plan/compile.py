"""One compile of a run's real train step for TPU devices, and what XLA says of it: per-chip memory (does it
fit the chip's HBM?) and, compiled with every product counted, FLOPs and an estimated step time. A depth
override (``blocks``) compiles the step with every stack cut to that many blocks."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from scaling.config import set_field
from scaling.models.sizes import cut_to
from scaling.objectives import build_objective
from scaling.objectives.base import Objective
from scaling.plan.tpus import GIB, Topology
from scaling.sharding import MESH_AXES
from scaling.state import ModelState
from scaling.step import build_training
from scaling.workdir import flatten

HEADROOM = 0.9  # a run fits when it needs at most this fraction of the chip's HBM
# XLA's TPU compiler turns a product sharded with FSDP (a weight gradient and its reduce-scatter, or a
# product and its all-gather) into a loop over shards, a "windowed einsum", and its cost analysis counts
# a loop body once: FLOPs and time are read from a compile without them (and without scanned stacks).
EVERY_PRODUCT_COUNTED = {
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
}
UNCOSTED_CALL = 'custom_call_target="ConcatBitcast"'
OUT_OF_MEMORY = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\)")


def with_depth(config: ml_collections.ConfigDict, blocks: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose every stack has at most ``blocks`` blocks: each size field (``size``,
    ``clip.text_size``, ``captioning.decoder_size``, ...) names its size cut to them, e.g. ``"g@4"``."""
    cut = config.copy_and_resolve_references()
    for field, value in flatten(json.loads(config.to_json())).items():
        if field.rpartition(".")[2].endswith("size") and isinstance(value, str) and value:
            set_field(cut, field, cut_to(value, blocks))
    return cut


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
                 objective: Objective) -> dict[str, float]:
    """The step cost of ``config`` with every product counted. XLA's cost analysis counts a loop body
    once and gives no time for a loop, so this compiles the step unrolled (scanned stacks are loops) and
    without windowed einsums (``EVERY_PRODUCT_COUNTED``). The time estimate is not additive over depth
    (memory-space assignment changes with the program), so the whole depth is compiled."""
    unrolled = config.copy_and_resolve_references()
    unrolled.model.scan_layers = False
    compiled, _ = compile_train_step(unrolled, devices, type(objective)(unrolled), EVERY_PRODUCT_COUNTED)
    return step_cost(compiled)


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
    config = config if blocks is None else with_depth(config, blocks)
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
