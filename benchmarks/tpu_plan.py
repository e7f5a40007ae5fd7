"""Our train step compiled for a TPU slice, from a CPU host: XLA's step-time estimate, temporaries per chip
and the implied MFU, for the reference ViT-B/16 shapes.

Reference: ImageTower size "b" (width 768, depth 12, 12 heads, MLP 3072), 224x224 images, patch 16,
batch 1024, a linear classification head with softmax cross-entropy, AdamW, FSDP over the 8 chips of
v5p:2x2x2, model.dtype bfloat16. MFU here is 6ND (6 x parameters x image tokens of the batch) over
the estimate times the chips' bfloat16 peak, as in the reference table.

Two estimates: the program as compiled by default ("as compiled", the reference table's method), whose
windowed einsums (FSDP products looped over shards) XLA's cost analysis counts once; and the program
the planner costs, compiled without them, where every product is counted ("planner").
Needs libtpu (``pip install -e ".[tpu]"``).

    JAX_PLATFORMS=cpu python benchmarks/tpu_plan.py [--topology v5p:2x2x2] [--remat none,dots]
"""

from __future__ import annotations

import argparse
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


def reference_config(chips: int, remat: str):
    config = load_config_file(ROOT / "experiments" / "clip.py", "size=b")
    config.batch_size, config.model.dtype, config.model.remat = 1024, "bfloat16", remat
    config.data.image_size, config.model.patch_size = 224, 16
    config.mesh.update({"data": 1, "fsdp": chips, "tensor": 1})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--topology", default="v5p:2x2x2")
    parser.add_argument("--remat", default="none")
    args = parser.parse_args()
    topology = plan.parse_topology(args.topology)
    devices = plan.topology_devices(topology)
    print(f"{'step':<40}{'as compiled':>13}{'MFU':>6}{'planner':>11}{'MFU':>6}{'temporaries/chip':>18}"
          "   (MFU: 6ND / (estimate x chips x bfloat16 peak))")
    for remat in args.remat.split(","):
        config = reference_config(len(devices), remat)
        objective = LinearClassification(config)
        row = plan.measure(config, topology, devices, objective)
        as_compiled = plan.step_cost(plan.compile_train_step(config, devices, objective)[0])
        model_flops = six_nd(config, objective) / (topology.chips * topology.chip.peak_flops)
        label = f"ours (ViT-B/16, bfloat16, remat={remat})"
        seconds = as_compiled["optimal_seconds"]
        print(f"{label:<40}{1e3 * seconds:>10.1f} ms{model_flops / seconds:>6.2f}"
              f"{1e3 * row['step_s']:>8.1f} ms{model_flops / row['step_s']:>6.2f}"
              f"{row['temporaries_gib']:>14.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
