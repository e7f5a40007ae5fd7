"""Probe features of one evaluation batch in chunks (scaling.models.chunks) against the whole batch at once.

For each objective, at initialisation, the jitted features of ``--batch`` CIFAR-10 test images are timed
with every pass over the whole batch and with ``--rows`` images per pass, interleaved ``--repeats`` times;
it prints the median of the per-repeat time ratios (chunked / whole) and the largest difference between
the two sets of features (0: the very same values).

    python benchmarks/eval_chunks.py [--objectives igpt,clip] [--size mu] [--rows 64] [--batch 256]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from scaling.config import load_config_file
from scaling.data.pipeline import make_eval_iterator
from scaling.evaluation.features import make_features_fn
from scaling.models import chunks
from scaling.sharding import make_mesh
from scaling.state import build_model_state
from scaling.sweeps.spec import available_objectives

ROOT = Path(__file__).resolve().parents[1]
WHOLE = 10**9  # rows per pass larger than any batch: one pass


def study_config(objective: str, size: str):
    """The objective's experiment at ``size`` on CIFAR-10 as the study trains it."""
    config = load_config_file(ROOT / "experiments" / f"{objective}.py", f"size={size}")
    config.data.name = "cifar10_jpeg"
    config.data.caption_level = "none" if objective == "igpt" else "short"
    if objective == "diffusion":
        config.diffusion.condition = "none"
    return config


def compare(objective: str, size: str, rows: int, batch: int, repeats: int) -> tuple[float, float]:
    """(median time ratio chunked / whole, largest absolute feature difference)."""
    config = study_config(objective, size)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        state = build_model_state(config, mesh)
        params = jax.jit(lambda: state.init_params(0))()
        images = next(make_eval_iterator(config.data, "test", batch_size=batch, max_examples=batch))["image"]
        rng = jax.random.key(0)
        fns, outputs = {}, {}
        for per_pass in (WHOLE, rows):
            chunks.ROWS = per_pass  # read when the function is traced, at its first call below
            fns[per_pass] = make_features_fn(state.objective, state.model)
            outputs[per_pass] = jax.block_until_ready(fns[per_pass](params, images, rng))
        difference = max(float(np.abs(np.asarray(outputs[rows][k]) - np.asarray(outputs[WHOLE][k])).max())
                         for k in outputs[WHOLE])
        seconds = {per_pass: [] for per_pass in fns}
        for _ in range(repeats):
            for per_pass, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(params, images, rng))
                seconds[per_pass].append(time.perf_counter() - start)
    ratio = float(np.median(np.array(seconds[rows]) / np.array(seconds[WHOLE])))
    return ratio, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--objectives", default=",".join(available_objectives()))
    parser.add_argument("--size", default="mu")
    parser.add_argument("--rows", type=int, default=chunks.ROWS)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'objective':<12}{'time chunked/whole':>20}{'max |difference|':>18}")
    for objective in args.objectives.split(","):
        ratio, difference = compare(objective, args.size, args.rows, args.batch, args.repeats)
        print(f"{objective:<12}{ratio:>20.3f}{difference:>18.2e}", flush=True)


if __name__ == "__main__":
    main()
