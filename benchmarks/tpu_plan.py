"""Our train step compiled for a TPU slice, from a CPU host: XLA's step-time estimate, temporaries and bytes
accessed per chip, and the implied MFU, for the reference ViT image-tower shapes.

Reference: ImageTower size "b" (width 768, depth 12, 12 heads, MLP 3072), 224x224 images, patch 16,
batch 1024, a linear classification head with softmax cross-entropy, AdamW, FSDP over the 8 chips of
v5p:2x2x2, model.dtype bfloat16 (``--size``, ``--batch-size`` and ``--topology`` change the shape; FSDP
spans every chip; ``--residual-dtype`` lists the residual streams to compile, ``--remat`` the policies).
MFU here is 6ND (6 x parameters x image tokens of the batch) over the estimate times the chips' bfloat16
peak, as in the reference table.

The estimate is of the program as compiled by default (the reference table's method), whose windowed
einsums (FSDP products looped over shards) XLA's cost analysis counts once. ``--planner`` adds the
estimate the planner uses, from a second compile without them where every product is counted.
Needs libtpu (``pip install -e ".[tpu]"``).

    JAX_PLATFORMS=cpu python benchmarks/tpu_plan.py [--topology v5p:2x2x2] [--size b] [--batch-size 1024]
        [--residual-dtype float32,bfloat16] [--remat none,dots] [--planner]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scaling import flops, plan
from scaling.config import load_config_file
from scaling.models.layers import Dense
from scaling.models.sizes import get_size
from scaling.models.transformer import ImageTower, Stacking
from scaling.objectives.base import BaseObjective

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 1000


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


def six_nd(config, objective: LinearClassification) -> float:
    """6 x parameters x image tokens of the batch: the MFU numerator the reference table uses."""
    model = nnx.eval_shape(lambda: objective.init(nnx.Rngs(0)))
    parameters = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tokens = config.batch_size * (config.data.image_size // config.model.patch_size) ** 2
    return 6.0 * parameters * tokens


def reference_config(chips: int, remat: str, size: str = "b", batch_size: int = 1024,
                     residual_dtype: str = "float32"):
    config = load_config_file(ROOT / "experiments" / "clip.py", f"size={size}")
    config.batch_size, config.model.dtype, config.model.remat = batch_size, "bfloat16", remat
    config.model.residual_dtype = residual_dtype
    config.data.image_size, config.model.patch_size = 224, 16
    config.mesh.update({"data": 1, "fsdp": chips, "tensor": 1})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--topology", default="v5p:2x2x2")
    parser.add_argument("--size", default="b")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--residual-dtype", default="float32")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--planner", action="store_true", help="also the planner's every-product estimate")
    args = parser.parse_args()
    topology = plan.parse_topology(args.topology)
    devices = plan.topology_devices(topology)
    planner_header = f"{'planner':>11}{'MFU':>6}" if args.planner else ""
    print(f"{'step':<44}{'estimate':>11}{'MFU':>6}{'temporaries':>13}{'accessed':>13}{planner_header}"
          "   (per chip; MFU: 6ND / (estimate x chips x bfloat16 peak))")
    for remat, residual in itertools.product(args.remat.split(","), args.residual_dtype.split(",")):
        config = reference_config(len(devices), remat, args.size, args.batch_size, residual)
        objective = LinearClassification(config)
        compiled, _ = plan.compile_train_step(config, devices, objective)
        seconds = plan.step_cost(compiled)["optimal_seconds"]
        cost = compiled.cost_analysis()
        accessed_gib = (cost[0] if isinstance(cost, list) else cost)["bytes accessed"] / plan.GIB
        temporaries_gib = compiled.memory_analysis().temp_size_in_bytes / plan.GIB
        model_flops = six_nd(config, objective) / (topology.chips * topology.chip.peak_flops)
        label = f"{args.size}/{config.model.patch_size} batch {args.batch_size} {residual} remat={remat}"
        line = (f"{label:<44}{1e3 * seconds:>8.1f} ms{model_flops / seconds:>6.3f}"
                f"{temporaries_gib:>9.2f} GiB{accessed_gib:>9.1f} GiB")
        if args.planner:
            planner_s = plan.cost_row(config, topology, devices, objective)["step_s"]
            line += f"{1e3 * planner_s:>8.1f} ms{model_flops / planner_s:>6.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
