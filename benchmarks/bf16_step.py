"""The bfloat16 train step against the float32 one, per objective: median of interleaved step-time ratios.

Each objective's step (float32 parameters and optimizer state; ``model.dtype`` the compute dtype) is
compiled once per dtype on one fixed synthetic batch, then timed in alternation: ``--repeats`` rounds of
``--steps`` float32 steps followed by as many bfloat16 steps, so both see the same load. Prints per
objective the median float32/bfloat16 time ratio (above 1: bfloat16 is faster) with the smallest and
largest round's ratio, and each dtype's median seconds per step.

    python benchmarks/bf16_step.py [--objectives clip,igpt] [--size nano] [--batch-size 128] [--repeats 5]
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

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")


def config_for(objective: str, size: str, dtype: str, batch_size: int):
    config = load_config_file(ROOT / "experiments" / f"{objective}.py", f"size={size}")
    config.batch_size, config.model.dtype = batch_size, dtype
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    return config


def compiled_steps(config):
    """A function running n train steps from the initial state on one batch, compiled (first step run)."""
    training = build_training(config)
    with jax.set_mesh(training.mesh):
        state = list(training.init(config.seed))
        batch = training.shard(synthetic_batch(config.data, config.batch_size))
        rate = np.float32(config.optim.learning_rate)

    def run(steps: int) -> float:
        with jax.set_mesh(training.mesh):
            start = time.perf_counter()
            for step in range(steps):
                state[0], state[1], metrics = training.step(state[0], state[1], batch, jnp.int32(step), rate)
            jax.block_until_ready(metrics)
            return (time.perf_counter() - start) / steps

    run(1)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--size", default="nano")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per dtype")
    args = parser.parse_args()

    print(f"size {args.size}, batch {args.batch_size}, {args.repeats} interleaved rounds of {args.steps} "
          "steps per dtype")
    print(f"{'objective':<12}{'f32 s/step':>11}{'bf16 s/step':>12}{'f32/bf16':>10}{'[min, max]':>16}")
    for objective in args.objectives.split(","):
        runs = {dtype: compiled_steps(config_for(objective, args.size, dtype, args.batch_size))
                for dtype in DTYPES}
        seconds = {dtype: [] for dtype in DTYPES}
        for _ in range(args.repeats):
            for dtype in DTYPES:
                seconds[dtype].append(runs[dtype](args.steps))
        ratios = np.array(seconds["float32"]) / np.array(seconds["bfloat16"])
        print(f"{objective:<12}{np.median(seconds['float32']):>11.3f}{np.median(seconds['bfloat16']):>12.3f}"
              f"{np.median(ratios):>10.2f}   [{ratios.min():.2f}, {ratios.max():.2f}]", flush=True)


if __name__ == "__main__":
    main()
