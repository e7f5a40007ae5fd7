"""Our train steps compiled for TPU slices from a CPU host, over a matrix of shapes: XLA's step-time
estimate, temporaries and bytes accessed per chip, and MFU, each beside the estimate recorded in
``tpu_plan.csv`` (a step more than 3% slower than recorded is flagged and the script exits 1) and beside
big_vision's figures where the same shape was measured for it. Run it before a change to the backbone, the
sharding rules or the step lands; compiles take minutes each, so it is a benchmark, not a test.

Shapes (``--shapes`` picks some by name; ``--list`` names them all):
- ``vit-b16-1024-2x2x2``, ``vit-l16-1024-2x2x2``, ``vit-b16-4096-4x4x4``: a supervised ViT image tower
  (224x224 images, patch 16, a linear 1000-class head on the mean-pooled tokens, softmax cross-entropy),
  the shapes big_vision's ViT was compiled at the same way (its recorded figures: ``BIG_VISION``);
- ``<objective>-l-<batch>-<topology>``: each registered objective's own train step as the pod sweep
  (``sweeps/pod_scale.py``) configures its run at size ``l`` (224-pixel images in 16-pixel patches, iGPT
  at its 32x32 raster, with ``remat=dots`` as the planner chose for it), batch 1024 on v5p:4x4x4 and 256 on
  v5p:2x2x2 (32 per chip, as on the sweep's 32 chips).
Every step: AdamW, bfloat16 compute, a bfloat16 residual stream (``--residual-dtype`` changes it; a row
compiled with another than its recorded one is not compared), FSDP over every chip, unrolled blocks.

The estimate is of the program as compiled by default (big_vision's figures were read the same way),
whose windowed einsums (FSDP products looped over shards) XLA's cost analysis counts once;
``--planner`` adds the planner's estimate, from a second compile without them where every product is
counted. MFU is the step's analytic training FLOPs (the objective's count, as the planner's MFU) over
the estimate times the chips' bfloat16 peak. ``--record`` writes the rows run into ``tpu_plan.csv``.
Needs libtpu (``pip install -e ".[tpu]"``).

    JAX_PLATFORMS=cpu python benchmarks/tpu_plan.py [--shapes vit-l16-1024-2x2x2,clip-l-1024-4x4x4]
        [--residual-dtype float32] [--planner] [--record] [--list]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp
import optax
from flax import nnx

from scaling import flops, plan
from scaling.config import load_config_file
from scaling.models.layers import Dense
from scaling.models.sizes import get_size
from scaling.models.transformer import ImageTower, Stacking
from scaling.objectives.base import BaseObjective
from scaling.sweeps.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
RECORDED = Path(__file__).with_suffix(".csv")
TOLERANCE = 1.03  # a step estimated more than 3% slower than recorded is a regression
CLASSES = 1000
RESIDUAL_DTYPE = "bfloat16"  # the residual stream the planned TPU runs use


class Classifier(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        size, dtype = get_size(config.size), jnp.dtype(config.model.dtype)
        self.tower = ImageTower(size, image_size=config.data.image_size, patch=config.model.patch_size,
                                positions=config.model.positions, dtype=dtype, rngs=rngs,
                                stacking=Stacking.of(config.model))
        self.head = Dense((size.width,), (CLASSES,), ("embed", "vocab"), dtype=dtype, rngs=rngs)


class LinearClassification(BaseObjective):
    """Supervised ViT classification on ``label``: the reference workload, not a registered objective."""

    name = "classification"

    def init(self, rngs: nnx.Rngs) -> Classifier:
        return Classifier(self.config, rngs=rngs)

    def loss(self, model: Classifier, batch, rng):
        del rng
        out_BLD, _ = model.tower(batch["image"])
        logits_BC = model.head(out_BLD.mean(axis=1))
        labels_B = batch["label"] % CLASSES
        return optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B).mean(), {}

    def train_flops_per_example(self) -> float:
        c, size = self.config, get_size(self.config.size)
        forward = flops.image_tower_forward(size, c.data.image_size, c.model.patch_size)
        return flops.TRAIN_MULTIPLIER * (forward + flops.dense(1, size.width, CLASSES))


@dataclasses.dataclass(frozen=True)
class Shape:
    """One row of the matrix: a workload (``vit`` or a registered objective) at a size, batch and slice."""

    workload: str
    size: str
    batch_size: int
    topology: str
    remat: str = "none"

    @property
    def name(self) -> str:
        patch = "16" if self.workload == "vit" else ""
        return f"{self.workload}-{self.size}{patch}-{self.batch_size}-{self.topology.split(':')[1]}"


POD_SIZE = "l"
POD_RUNS = {run.config.objective: run.config for run in load_sweep(ROOT / "sweeps" / "pod_scale.py").runs
            if run.config.size == POD_SIZE}
SHAPES = {shape.name: shape for shape in (
    Shape("vit", "b", 1024, "v5p:2x2x2"),
    Shape("vit", "l", 1024, "v5p:2x2x2"),
    Shape("vit", "b", 4096, "v5p:4x4x4"),
    *(Shape(objective, POD_SIZE, batch, topology, "dots" if objective == "igpt" else "none")
      for topology, batch in (("v5p:4x4x4", 1024), ("v5p:2x2x2", 256)) for objective in POD_RUNS),
)}
# big_vision's ViT train step (AdamW, bfloat16, FSDP over every chip) compiled for the same slices and read
# the same way: estimate ms, temporaries GiB per chip.
BIG_VISION = {"vit-b16-1024-2x2x2": (64.4, 10.46), "vit-l16-1024-2x2x2": (166.4, 27.3),
              "vit-b16-4096-4x4x4": (30.8, 3.92)}
COLUMNS = ("shape", "residual_dtype", "estimate_ms", "temporaries_gib", "accessed_gib", "mfu")


def shape_config(shape: Shape, chips: int, residual_dtype: str):
    """The step's config: the pod sweep's run of that objective and size, or the ViT reference."""
    if shape.workload == "vit":
        config = load_config_file(ROOT / "experiments" / "clip.py", f"size={shape.size}")
        config.data.image_size, config.model.patch_size, config.model.dtype = 224, 16, "bfloat16"
    else:
        config = POD_RUNS[shape.workload].copy_and_resolve_references()
    config.batch_size, config.model.remat, config.model.scan_layers = shape.batch_size, shape.remat, False
    config.model.residual_dtype = residual_dtype
    config.mesh.update({"data": 1, "fsdp": chips, "tensor": 1})
    return config


def measure(shape: Shape, residual_dtype: str, planner: bool) -> dict[str, object]:
    """One compile of ``shape``'s step (two with ``planner``): the row ``tpu_plan.csv`` records."""
    topology = plan.parse_topology(shape.topology)
    devices = plan.topology_devices(topology)
    config = shape_config(shape, len(devices), residual_dtype)
    objective = LinearClassification(config) if shape.workload == "vit" else None
    compiled, state = plan.compile_train_step(config, devices, objective)
    seconds = plan.step_cost(compiled)["optimal_seconds"]
    cost = compiled.cost_analysis()
    peak = topology.chips * topology.chip.peak_flops
    model_flops = state.objective.train_flops_per_example() * config.batch_size / peak
    row = {"shape": shape.name, "residual_dtype": residual_dtype, "estimate_ms": 1e3 * seconds,
           "temporaries_gib": compiled.memory_analysis().temp_size_in_bytes / plan.GIB,
           "accessed_gib": (cost[0] if isinstance(cost, list) else cost)["bytes accessed"] / plan.GIB,
           "mfu": model_flops / seconds}
    if planner:
        row["planner_ms"] = 1e3 * plan.cost_row(config, topology, devices, objective)["step_s"]
    return row


def read_recorded() -> dict[str, dict[str, str]]:
    if not RECORDED.exists():
        return {}
    with RECORDED.open() as file:
        return {row["shape"]: row for row in csv.DictReader(file)}


def write_recorded(rows: dict[str, dict[str, object]]) -> None:
    """``rows`` (by shape name) as ``tpu_plan.csv``, in the matrix's order."""
    with RECORDED.open("w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for name in SHAPES:
            if name in rows:
                writer.writerow({key: f"{value:.4g}" if isinstance(value, float) else value
                                 for key, value in rows[name].items()})


def against_recorded(row: dict[str, object], recorded: dict[str, str] | None) -> tuple[str, bool]:
    """``row``'s estimate over the recorded one, and whether that is a regression (> ``TOLERANCE``)."""
    if recorded is None:
        return "not recorded", False
    if recorded["residual_dtype"] != row["residual_dtype"]:
        return "other settings", False
    ratio = row["estimate_ms"] / float(recorded["estimate_ms"])
    return f"{ratio:.3f}" + (" REGRESSION" if ratio > TOLERANCE else ""), ratio > TOLERANCE


def line(row: dict[str, object], versus: str) -> str:
    big_vision = BIG_VISION.get(row["shape"])
    theirs = (f"{big_vision[0]:>7.1f} ms {big_vision[1]:>5.2f} GiB {row['estimate_ms'] / big_vision[0]:>6.3f}"
              if big_vision else f"{'':>27}")
    planner = f"{row['planner_ms']:>9.1f} ms" if "planner_ms" in row else ""
    return (f"{row['shape']:<26}{row['estimate_ms']:>9.1f} ms{row['temporaries_gib']:>9.2f} GiB"
            f"{row['accessed_gib']:>9.1f} GiB{row['mfu']:>7.3f}  {theirs}  {versus:<18}{planner}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names (default: all)")
    parser.add_argument("--list", action="store_true", help="name the shapes and exit")
    parser.add_argument("--residual-dtype", default=RESIDUAL_DTYPE)
    parser.add_argument("--planner", action="store_true", help="also the planner's every-product estimate")
    parser.add_argument("--record", action="store_true", help="write the rows run into tpu_plan.csv")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SHAPES))
        return
    unknown = [name for name in args.shapes.split(",") if name not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {', '.join(unknown)}; --list names them")
    recorded = read_recorded()
    planner = f"{'planner':>12}" if args.planner else ""
    print(f"{'shape':<26}{'estimate':>12}{'temporaries':>13}{'accessed':>13}{'MFU':>7}  "
          f"{'big_vision':>19}{'ours/bv':>8}  {'vs recorded':<18}{planner}\n"
          "(per chip; MFU: analytic training FLOPs / (estimate x chips x bfloat16 peak))")
    regressions = []
    for name in args.shapes.split(","):
        row = measure(SHAPES[name], args.residual_dtype, args.planner)
        versus, regressed = against_recorded(row, recorded.get(name))
        print(line(row, versus), flush=True)
        regressions += [name] if regressed else []
        if args.record:  # row by row: a long run stopped midway keeps what it measured
            recorded[name] = row
            write_recorded(recorded)
    if regressions:
        print(f"{len(regressions)} shape(s) more than {TOLERANCE - 1:.0%} slower than recorded: "
              f"{', '.join(regressions)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
