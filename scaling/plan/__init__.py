"""Ahead-of-time planning of runs on TPU slices, from a CPU host.

With libtpu installed, ``jax.experimental.topologies`` gives compile-only devices of a TPU topology. For
each run the REAL sharded train step (``scaling.step.build_training``) is lowered with abstract inputs and
compiled for those devices; XLA's memory analysis gives the per-chip bytes, and the cost analysis of the
same step compiled with every product outside loops gives the FLOPs and an estimated step time. From
those: whether the run fits the chip's HBM, the steps of its budget, chip-hours, and the implied MFU.
Without a mesh, candidate meshes are compiled, those that fit are ranked by the cost of a shallow step
(``RANKING_BLOCKS``), and the close ones are costed at the whole depth, the fastest kept. Results are
cached per run id, topology and mesh request, and per compile.

One idea per module, each using only those before it:

- ``tpus``: the TPU catalogue (chips, slice names, chip grids) and compile-only devices.
- ``compile``: one compile of a run's step and its memory and cost rows (a depth override cuts stacks).
- ``meshes``: the mesh (and remat) search over candidate meshes.
- ``runs``: planning many runs, with shared compiles and the cache.
- ``table``: totals, the input column (a measured input rate against each run's need), the printed
  table, the CSV and JSON outputs.
"""

from scaling.plan.compile import compile_train_step, cost_row, measure, memory_row, mesh_name, step_cost
from scaling.plan.meshes import RANKING_BLOCKS, choose_mesh, parse_mesh, with_layout
from scaling.plan.runs import plan_runs
from scaling.plan.table import format_table, totals, with_input, write_outputs
from scaling.plan.tpus import GIB, PlanError, Topology, parse_topology, topology_devices

__all__ = [
    "GIB", "RANKING_BLOCKS", "PlanError", "Topology", "choose_mesh", "compile_train_step", "cost_row",
    "format_table", "measure", "memory_row", "mesh_name", "parse_mesh", "parse_topology", "plan_runs",
    "step_cost", "topology_devices", "totals", "with_input", "with_layout", "write_outputs",
]
