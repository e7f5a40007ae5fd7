"""Where a study's wall time goes: a miniature of a CIFAR-10 study and the share of it spent evaluating.

The miniature is a study's sweep file (``--study``: ``sweeps/cifar10_objectives_v2.py`` by default, or the
first study, ``cifar10_objectives``) at one size: its fields, its tuned optimizers, its per-objective
evaluation protocol (zero-shot for CLIP and captioning, diffusion probed at its noise levels, every layer,
the raw-pixel floor) and its ladder (a warmup-stable-decay run to the top budget with cool-down branches,
and a second seed at the first point's budget), built by the study's own ``ladder_runs`` with the top
budget and the probe examples both divided by ``--scale`` so that training and evaluation shrink together.
It runs in a fresh folder (the compilation and pixel-probe caches are shared, as in a study; the runs'
cached init probes are removed first, so each invocation probes every initialisation, as a study does
once) and prints, from the runs' own accounts, the evaluation share of the sweep's wall, each objective's
evaluation seconds per part (``eval_s/<part>`` of the eval records) and every probe and zero-shot accuracy,
so a change can be checked for both speed and numbers at the same seed.
``--zero-shot-points`` sets ``eval.zero_shot_points`` of every run (``final``: zero-shot at the end of each
schedule only) and ``--zero-shot-examples N`` the study's ``eval.zero_shot_examples`` (zero-shot on the
first N of its probe test examples, divided by ``--scale`` here): protocol levers to weigh against the
study's own values.

    python benchmarks/study_eval_share.py [--study cifar10_objectives] [--size mu] [--scale 8]
                                          [--objectives clip,igpt] [--keep DIR]
                                          [--zero-shot-points all|final] [--zero-shot-examples 4300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from scaling.config import load_python_file
from scaling.data.pipeline import resolve_data_dir
from scaling.evaluation.init_probe import CACHE_FOLDER, init_key
from scaling.sweeps.runner import run_sweep
from scaling.sweeps.spec import SWEEPS_DIR, Sweep

STUDIES = ("cifar10_objectives_v2", "cifar10_objectives")
SHOWN = ("probe_accuracy", "probe_layer", "zero_shot_accuracy", "pixel_probe_accuracy")
PROBE_EXAMPLES = ("eval.probe_train_examples", "eval.probe_test_examples")


def miniature(study_name: str, size: str, scale: float, objectives: list[str] | None = None,
              zero_shot_points: str | None = None, zero_shot_examples: int | None = None) -> Sweep:
    study = load_python_file(SWEEPS_DIR / f"{study_name}.py")
    overrides = {key: int(study.FIELDS[key] / scale) for key in PROBE_EXAMPLES}
    if zero_shot_points is not None:
        overrides["eval.zero_shot_points"] = zero_shot_points
    if zero_shot_examples is not None:
        overrides["eval.zero_shot_examples"] = int(zero_shot_examples / scale)
    chosen = {"objectives": objectives} if objectives else {}
    return Sweep("study_miniature", study.ladder_runs(sizes=[size], budget_divisor=scale, overrides=overrides,
                                                      **chosen))


def forget_init_probes(sweep: Sweep) -> None:
    """Removes the cached init probes of the miniature's runs, so that every invocation measures the same
    work: in a study each initialisation is probed once, and here each run has its own."""
    for run in sweep.runs:
        path = resolve_data_dir(run.config.data) / CACHE_FOLDER / f"{init_key(run.config)}.json"
        path.unlink(missing_ok=True)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def report(sweep_dir: Path, wall_s: float) -> None:
    summary = read_json(sweep_dir / "summary.json")
    print(f"wall {wall_s:.0f} s; shares of the sweep's wall: "
          + ", ".join(f"{name} {share:.3f}" for name, share in summary["shares"].items() if share > 0))
    print(f"evaluation share: {summary['shares']['eval']:.3f}")
    print(f"{'run':<44}{'train s':>9}{'eval s':>9}  eval records")
    for run_dir in sorted(path for path in sweep_dir.iterdir() if (path / "result.json").exists()):
        seconds = read_json(run_dir / "result.json")["seconds"]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if r.get("kind") == "eval"]
        shown = "; ".join(
            f"step {r['step']}: " + " ".join(f"{k}={r[k]:.4f}" if isinstance(r[k], float) else f"{k}={r[k]}"
                                             for k in SHOWN if k in r)
            for r in evals
        )
        print(f"{run_dir.name:<44}{seconds['train']:>9.1f}{seconds['eval']:>9.1f}  {shown}")
    print_parts(sweep_dir)


def eval_parts(records: list[dict]) -> dict[str, float]:
    """Seconds per part of the evaluations of one run's eval records (``init``: its step-0 probe)."""
    parts: dict[str, float] = {}
    for record in records:
        if record.get("point") == "init":
            parts["init"] = parts.get("init", 0.0) + record.get("eval_s", 0.0)
        for name, value in record.items():
            if name.startswith("eval_s/"):
                parts[name[len("eval_s/"):]] = parts.get(name[len("eval_s/"):], 0.0) + value
    return parts


def print_parts(sweep_dir: Path) -> None:
    """Each objective's evaluation seconds per part, summed over its runs' eval records."""
    per_objective: dict[str, dict[str, float]] = {}
    for run_dir in sorted(path for path in sweep_dir.iterdir() if (path / "result.json").exists()):
        objective = read_json(run_dir / "result.json")["objective"]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if r.get("kind") == "eval"]
        parts = eval_parts(evals)
        parts["other"] = (read_json(run_dir / "result.json")["seconds"]["eval"]
                          - sum(r.get("eval_s", 0.0) for r in evals))
        total = per_objective.setdefault(objective, {})
        for name, value in parts.items():
            total[name] = total.get(name, 0.0) + value
    names = sorted({name for parts in per_objective.values() for name in parts})
    print("evaluation seconds per part, summed over each objective's runs (other: the run's eval clock "
          "outside its records, e.g. samples):")
    print(f"{'objective':<12}" + "".join(f"{name:>15}" for name in names))
    for objective, parts in per_objective.items():
        print(f"{objective:<12}" + "".join(f"{parts.get(name, 0.0):>15.1f}" for name in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--study", default=STUDIES[0], choices=STUDIES)
    parser.add_argument("--size", default="mu")
    parser.add_argument("--scale", type=float, default=8.0, help="divides the top budget and probe examples")
    parser.add_argument("--objectives", default="", help="comma-separated; the study's own by default")
    parser.add_argument("--keep", default="", help="run in this folder (kept) instead of a temporary one")
    parser.add_argument("--zero-shot-points", choices=("all", "final"),
                        help="eval.zero_shot_points of every run (the study's own by default)")
    parser.add_argument("--zero-shot-examples", type=int,
                        help="eval.zero_shot_examples of the study (divided by --scale like the probe's)")
    args = parser.parse_args()

    sweep = miniature(args.study, args.size, args.scale, [o for o in args.objectives.split(",") if o],
                      args.zero_shot_points, args.zero_shot_examples)
    forget_init_probes(sweep)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        start = time.perf_counter()
        counts = run_sweep(sweep, root, out=lambda line: print(line, file=sys.stderr, flush=True))
        wall_s = time.perf_counter() - start
        print(f"runs: {counts}")
        report(root / sweep.name, wall_s)


if __name__ == "__main__":
    main()
