"""Training throughput against the machine's float32 matmul peak, per objective and compute dtype.

Reference config: width 512, depth 8, 8 heads, MLP 2048 (size "m"), patch 4 on 32x32 images, batch
256, AdamW; CLIP adds its text tower, captioning its decoder (64-token captions); iGPT models 16x16
images (256 pixel tokens), as its experiment file does. Prints achieved
training FLOP/s (analytic FLOPs of the step divided by its measured time) divided by the float32
matmul peak measured in the same process.

    python benchmarks/train_step.py [--objectives clip,igpt] [--dtypes float32,bfloat16] [--steps 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import load_config_file
from scaling.data.batch import synthetic_batch
from scaling.objectives import OBJECTIVES
from scaling.step import build_training
from scaling.sweeps.summary import matmul_peak

ROOT = Path(__file__).resolve().parents[1]


def reference_config(objective: str, dtype: str, batch_size: int):
    config = load_config_file(ROOT / "experiments" / f"{objective}.py", "size=m")
    config.batch_size, config.model.dtype = batch_size, dtype
    config.model.patch_size = 4  # images at the experiment's resolution: 32x32, 16x16 for iGPT
    config.data.max_caption_len = 64  # text towers and decoders read 64-token captions
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    return config


def step_seconds(config, steps: int) -> tuple[float, float]:
    """(seconds per train step after compilation, analytic FLOPs per step)."""
    training = build_training(config)
    with jax.set_mesh(training.mesh):
        params, opt_state = training.init(config.seed)
        batch = training.shard(synthetic_batch(config.data, config.batch_size))
        step_fn = training.step
        rate = np.float32(config.optim.learning_rate)
        params, opt_state, metrics = step_fn(params, opt_state, batch, jnp.int32(0), rate)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            params, opt_state, metrics = step_fn(params, opt_state, batch, jnp.int32(step), rate)
        jax.block_until_ready(metrics)
        seconds = (time.perf_counter() - start) / steps
    return seconds, training.state.objective.train_flops_per_example() * config.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    peak = matmul_peak()
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {jax.device_count()} device(s)")
    print(f"{'objective':<12}{'dtype':<10}{'s/step':>9}{'GFLOP/step':>12}{'GFLOP/s':>10}{'ratio':>8}")
    for objective in args.objectives.split(","):
        for dtype in args.dtypes.split(","):
            config = reference_config(objective, dtype, args.batch_size)
            seconds, flops = step_seconds(config, args.steps)
            achieved = flops / seconds
            print(f"{objective:<12}{dtype:<10}{seconds:>9.2f}{flops / 1e9:>12.1f}"
                  f"{achieved / 1e9:>10.1f}{achieved / peak:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
