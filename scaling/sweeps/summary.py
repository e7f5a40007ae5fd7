"""What a sweep invocation spent its wall time on, and how well its training used the machine.

The runner times its own parts (loading the sweep file, building data sets, writing the table and
figure), adds the seconds each run trained in this invocation accounts for in its result.json (setup,
compile, train, eval, checkpoint) and measures the machine's float32 matmul peak after its runs.
``summary.json`` in the sweep folder keeps the account; ``summary_line`` prints it. ``flops_over_peak`` =
training FLOPs / (wall x peak) is the share of the machine's capacity that went into training steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from scaling.train import ACTIVITIES
from scaling.workdir import write_json_atomic

SUMMARY_NAME = "summary.json"
PEAK_SIZE = 2048  # square float32 matmul timed for the peak: large enough to reach it on CPU cores
PEAK_REPEATS = 5
RUNNER_ACTIVITIES = ("load", "data", "outputs")  # reading the sweep file, building data, results and figure


def matmul_peak(size: int = PEAK_SIZE, repeats: int = PEAK_REPEATS) -> float:
    """FLOP/s of the fastest of ``repeats`` float32 [size, size] x [size, size] matmuls (compiled first)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, a).compile()
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def summarize(results: Iterable[dict[str, Any]], runner_seconds: dict[str, float], wall_s: float,
              peak_flops_per_s: float) -> dict[str, Any]:
    """The account of one sweep invocation from the result.json of each run it trained.

    ``seconds`` holds every measured part (the runs' activities, the runner's data and outputs); ``shares``
    divides them by the wall time, and ``unaccounted`` is what is left (imports, bookkeeping). With
    --max-parallel N the runs' seconds overlap and the shares may sum to up to N.
    """
    results = list(results)
    seconds = dict.fromkeys((*ACTIVITIES, *RUNNER_ACTIVITIES), 0.0)
    for result in results:
        for activity, value in result.get("seconds", {}).items():
            seconds[activity] += value
    seconds.update(runner_seconds)
    flops = sum(result.get("total_flops", result.get("flops", 0.0)) for result in results)  # a crash has none
    shares = {activity: value / wall_s for activity, value in seconds.items()}
    return {
        "runs_trained": len(results),
        "training_flops": flops,
        "wall_s": wall_s,
        "peak_flops_per_s": peak_flops_per_s,
        "flops_over_peak": flops / (wall_s * peak_flops_per_s),
        "train_step_flops_over_peak": flops / max(seconds["train"], 1e-9) / peak_flops_per_s,
        "seconds": seconds,
        "shares": shares,
        "unaccounted": 1 - sum(shares.values()),
    }


def summary_line(summary: dict[str, Any]) -> str:
    shares = summary["shares"]
    parts = ", ".join(f"{activity} {100 * share:.0f}%" for activity, share in shares.items() if share > 0)
    return (f"trained {summary['training_flops']:.3g} FLOPs in {summary['runs_trained']} runs, "
            f"wall {summary['wall_s']:.0f} s; FLOP/s over float32 matmul peak "
            f"({summary['peak_flops_per_s'] / 1e9:.0f} GFLOP/s): {summary['flops_over_peak']:.3f} of the "
            f"wall, {summary['train_step_flops_over_peak']:.2f} within train steps; wall shares: {parts}")


def write_summary(summary: dict[str, Any], sweep_dir: str | Path) -> Path:
    path = Path(sweep_dir) / SUMMARY_NAME
    write_json_atomic(path, summary)
    return path
