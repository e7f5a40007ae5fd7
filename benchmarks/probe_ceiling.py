"""The ceiling of the quickstart's probe: a supervised classifier of the probe label, trained with the
quickstart's fields at its size and largest budget, then probed like every quickstart run.

    python benchmarks/probe_ceiling.py [--root runs] [--size nano] [--flops 6e12]

Prints the supervised run's probe accuracy with its 95% bootstrap interval next to the raw-pixel probe of
the same examples; the run lives in ``<root>/quickstart-ceiling/``, apart from the quickstart's sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaling.config import load_python_file
from scaling.sweeps.spec import SWEEPS_DIR, Budget, experiment_config, make_run, set_field, warmup_fraction
from scaling.train import train
from scaling.workdir import RunFiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs")
    parser.add_argument("--size", default="nano")
    parser.add_argument("--flops", type=float, default=0.0, help="default: the quickstart's largest budget")
    args = parser.parse_args()
    quickstart = load_python_file(SWEEPS_DIR / "quickstart.py")
    budget = Budget.flops(args.flops or max(budget.amount for budget in quickstart.BUDGETS))
    config = experiment_config("supervised", args.size)
    for field, value in quickstart.FIELDS.items():
        set_field(config, field, value)
    run = make_run(config, budget, adjust=warmup_fraction(0.1))
    workdir = Path(args.root) / "quickstart-ceiling" / run.run_id
    result = train(run.config, workdir)
    final = [r for r in RunFiles(workdir).read_metrics() if r["kind"] == "eval"][-1]
    shown = lambda field: f"{final[field]:.4f} [{final[field + '_low']:.4f}, {final[field + '_high']:.4f}]"
    print(f"supervised {args.size} at {result['flops']:.3g} FLOPs ({result['wall_s']:.0f} s): probe accuracy "
          f"{shown('probe_accuracy')} ({final['probe_layer']}); raw pixels {shown('pixel_probe_accuracy')}")


if __name__ == "__main__":
    main()
