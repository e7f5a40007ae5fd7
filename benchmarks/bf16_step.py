"""The bfloat16 train step against the float32 one, per objective: its speed, and what it learns.

What is bfloat16 is ``--field``: ``model.dtype``, the compute (parameters and optimizer state stay
float32), or ``model.residual_dtype``, the residual stream between blocks under bfloat16 compute (as in
``benchmarks/tpu_plan.py``'s matrix). Speed: each objective's step is compiled once per dtype on one fixed
synthetic batch, then timed in alternation: ``--repeats`` rounds of ``--steps`` float32 steps followed by
as many bfloat16 steps, so both see the same load. Prints per objective the median float32/bfloat16 time
ratio (above 1: bfloat16 is faster) with the smallest and largest round's ratio, and each dtype's median
seconds per step.

Quality (``--train-steps N``): each objective trains N steps on CIFAR-10 in both dtypes at each of
``--seeds`` seeds, with the v2 study's fields (``sweeps/cifar10_objectives_v2.py``: its data, captions,
µP and tuned optimizer rows) and one probe at the end (``--probe-examples`` training and test images).
A seed gives both dtypes the same initialisation and batches, so each seed is one paired difference,
bfloat16 minus float32, of the final loss (the mean training loss of the last fifth of the steps, each
batch unseen) and of the probe accuracy; printed is the mean difference with its 95% t-interval over
seeds, beside the float32 runs' own spread across seeds. The runs are a resumable sweep in
``--workdir``, so an interrupted check resumes where it stopped.

    python benchmarks/bf16_step.py [--objectives clip,igpt] [--size nano] [--batch-size 128] [--repeats 5]
    python benchmarks/bf16_step.py --train-steps 150 [--seeds 3] [--workdir runs]  # runs/bf16_check
    python benchmarks/bf16_step.py --field model.residual_dtype --train-steps 150  # bf16_residual_check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from scaling.analysis.tuning import final_train_loss
from scaling.config import load_config_file, load_python_file
from scaling.data.batch import synthetic_batch
from scaling.objectives import OBJECTIVES
from scaling.step import build_training
from scaling.sweeps.results import build_table
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import SWEEPS_DIR, Budget, Sweep, available_objectives, grid
from scaling.sweeps.tuned import tuned_fields
from scaling.workdir import END_OF_SCHEDULE

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")
FIXED = {"model.dtype": {}, "model.residual_dtype": {"model.dtype": "bfloat16"}}  # besides --field, per field
CHECKS = {"model.dtype": "bf16_check", "model.residual_dtype": "bf16_residual_check"}  # the quality sweeps


def config_for(objective: str, size: str, field: str, dtype: str, batch_size: int):
    config = load_config_file(ROOT / "experiments" / f"{objective}.py", f"size={size}")
    config.update_from_flattened_dict({**FIXED[field], field: dtype, "batch_size": batch_size})
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


def quality_sweep(objectives: list[str], size: str, field: str, steps: int, seeds: int,
                  probe_examples: int) -> Sweep:
    """Every objective at ``size`` for ``steps`` steps with ``field`` in both dtypes at each seed, with the
    v2 study's fields and tuned rows, probed once at the end (no zero-shot)."""
    study = load_python_file(SWEEPS_DIR / "cifar10_objectives_v2.py")
    fields = lambda objective: {
        **study.FIELDS, **study.PER_OBJECTIVE.get(objective, {}), **tuned_fields(study.STUDY, objective),
        "checkpoint_every": steps, "eval.num_points": 1, "eval.zero_shot": False,
        "eval.probe_train_examples": probe_examples, "eval.probe_test_examples": probe_examples,
        **FIXED[field]}
    runs = [run for objective in objectives
            for run in grid([objective], [size], [Budget.steps(steps)], range(seeds),
                            axes={field: DTYPES}, fields=fields(objective))]
    return Sweep(CHECKS[field], runs)


def paired_differences(table, field: str) -> dict[str, dict[str, np.ndarray]]:
    """Per objective, ``loss`` and ``probe``: bfloat16 minus float32 at each seed both dtypes finished,
    and the float32 runs' own values (``*_float32``) for the spread across seeds."""
    ends = table[(table["kind"] == "eval") & (table["point"] == END_OF_SCHEDULE)].drop_duplicates(
        "run_id", keep="last").set_index("run_id")
    ends = ends.assign(loss=final_train_loss(table).reindex(ends.index))
    values = ends.pivot_table(index=["objective", "seed"], columns=field,
                              values=["loss", "probe_accuracy"]).dropna()
    out = {}
    for objective, rows in values.groupby(level="objective"):
        out[objective] = {
            "loss": (rows["loss"]["bfloat16"] - rows["loss"]["float32"]).to_numpy(),
            "probe": (rows["probe_accuracy"]["bfloat16"] - rows["probe_accuracy"]["float32"]).to_numpy(),
            "loss_float32": rows["loss"]["float32"].to_numpy(),
            "probe_float32": rows["probe_accuracy"]["float32"].to_numpy(),
        }
    return out


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% t-interval (the mean alone, twice, from one value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def print_quality(differences: dict[str, dict[str, np.ndarray]], field: str) -> None:
    print(f"{field} bfloat16 minus float32, paired by seed: mean [95% t-interval over seeds]; float32's own "
          "standard deviation across seeds beside it")
    print(f"{'objective':<12}{'seeds':>6}{'final loss diff':>32}{'f32 sd':>9}{'probe acc diff':>32}"
          f"{'f32 sd':>9}")
    for objective, d in differences.items():
        loss, probe = t_interval(d["loss"]), t_interval(d["probe"])
        spread = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        print(f"{objective:<12}{len(d['loss']):>6}"
              f"{loss[0]:>+12.4f} [{loss[1]:+.4f}, {loss[2]:+.4f}]{spread(d['loss_float32']):>9.4f}"
              f"{probe[0]:>+12.4f} [{probe[1]:+.4f}, {probe[2]:+.4f}]{spread(d['probe_float32']):>9.4f}")


def check_quality(args) -> None:
    objectives = [name for name in args.objectives.split(",") if name in available_objectives()]
    sweep = quality_sweep(objectives, args.size, args.field, args.train_steps, args.seeds,
                          args.probe_examples)
    counts = run_sweep(sweep, Path(args.workdir), out=lambda line: print(line, file=sys.stderr, flush=True))
    table = build_table(Path(args.workdir) / sweep.name)
    if "loss" not in table:
        sys.exit(f"no run of {sweep.name} has finished ({counts}); the failures above say why")
    print_quality(paired_differences(table, args.field), args.field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--field", choices=tuple(FIXED), default="model.dtype",
                        help="what is bfloat16 in the second arm: the compute, or the residual stream under "
                             "bfloat16 compute")
    parser.add_argument("--size", default="nano")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per dtype")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train every objective this many steps on CIFAR-10 in both dtypes and compare "
                             "final loss and probe (0: time the step only)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dtype for --train-steps")
    parser.add_argument("--probe-examples", type=int, default=5000,
                        help="probe training and test images for --train-steps")
    parser.add_argument("--workdir", default="runs", help="where --train-steps keeps its resumable sweep")
    args = parser.parse_args()
    if args.train_steps:
        check_quality(args)
        return

    print(f"{args.field}, size {args.size}, batch {args.batch_size}, {args.repeats} interleaved rounds of "
          f"{args.steps} steps per dtype")
    print(f"{'objective':<12}{'f32 s/step':>11}{'bf16 s/step':>12}{'f32/bf16':>10}{'[min, max]':>16}")
    for objective in args.objectives.split(","):
        runs = {dtype: compiled_steps(config_for(objective, args.size, args.field, dtype, args.batch_size))
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
