"""Choosing a run's mesh (and remat policy) on a slice: the candidate meshes, the memory of each, a ranking
of those that fit on a shallow step, and the whole-depth cost of the close ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from scaling.config import parse_arg
from scaling.models.sizes import get_size
from scaling.objectives import validate_config
from scaling.plan.compile import UNCOSTED, cost_row, memory_row
from scaling.plan.tpus import PlanError, Topology
from scaling.sharding import MESH_AXES, MeshError, resolve_mesh_shape


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
