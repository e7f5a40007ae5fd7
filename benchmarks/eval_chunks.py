"""Probe features and zero-shot class scores of one evaluation batch in chunks (scaling.models.chunks)
against the whole batch at once.

For each objective, at initialisation, the jitted features (and, where the objective scores classes, the
zero-shot scores of CIFAR-10's classes) of ``--batch`` CIFAR-10 test images are timed with one pass over
the whole batch and with ``--rows`` images per pass, interleaved ``--repeats`` times; it prints the median
of the per-repeat time ratios (chunked / whole) and the largest difference between the two results
(0: the very same values).

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
from scaling.evaluation.evaluator import class_names
from scaling.evaluation.features import BatchFn, make_features_fn
from scaling.evaluation.zero_shot import supports_zero_shot
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


def batch_functions(state, data) -> dict[str, BatchFn]:
    """The jitted features of the objective and, where it scores the probe label's classes, its scores."""
    functions = {"features": make_features_fn(state.objective, state.model)}
    if supports_zero_shot(state.objective):
        names = class_names(data)
        functions["zero-shot"] = jax.jit(lambda params, images, rng: state.objective.zero_shot_scores(
            state.model(params), images, names, rng))
    return functions


def compare(objective: str, size: str, rows: int, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{function: (median time ratio chunked / whole, largest absolute difference of its outputs)}."""
    config = study_config(objective, size)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        state = build_model_state(config, mesh)
        params = jax.jit(lambda: state.init_params(0))()
        images = next(make_eval_iterator(config.data, "test", batch_size=batch, max_examples=batch))["image"]
        rng = jax.random.key(0)
        fns, outputs = {}, {}
        for per_pass in (WHOLE, rows):
            chunks.ROWS = per_pass  # read when a function is traced, at its first call below
            for name, fn in batch_functions(state, config.data).items():
                fns[name, per_pass] = fn
                outputs[name, per_pass] = jax.block_until_ready(fn(params, images, rng))
        seconds = {key: [] for key in fns}
        for _ in range(repeats):
            for key, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(params, images, rng))
                seconds[key].append(time.perf_counter() - start)
    results = {}
    for name in {name for name, _ in fns}:
        chunked, whole = outputs[name, rows], outputs[name, WHOLE]
        difference = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                         for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole), strict=True))
        ratio = float(np.median(np.array(seconds[name, rows]) / np.array(seconds[name, WHOLE])))
        results[name] = (ratio, difference)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--objectives", default=",".join(available_objectives()))
    parser.add_argument("--size", default="mu")
    parser.add_argument("--rows", type=int, default=chunks.ROWS)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'objective':<12}{'function':<12}{'time chunked/whole':>20}{'max |difference|':>18}")
    for objective in args.objectives.split(","):
        for name, (ratio, difference) in sorted(compare(objective, args.size, args.rows, args.batch,
                                                        args.repeats).items()):
            print(f"{objective:<12}{name:<12}{ratio:>20.3f}{difference:>18.2e}", flush=True)


if __name__ == "__main__":
    main()
