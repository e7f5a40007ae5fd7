"""Objectives vs compute: every registered objective across model sizes at matched FLOP budgets.

The main study: for each budget, which objective gives the best linear-probe accuracy, and how does the
best size per budget grow. Sized for a TPU slice (e.g. ``--executor tpu-vm --tpu v5p-64``):
4 sizes x 4 budgets per objective, 1e16 to 1e18 training FLOPs per run.
"""

from scaling.sweeps.spec import Budget, Sweep, available_objectives, grid, warmup_fraction

SIZES = ("nano", "ti", "s", "m")
BUDGETS = tuple(Budget.flops(f) for f in (1e16, 1e17, 3e17, 1e18))
FIELDS = {
    "batch_size": 1024,
    "checkpoint_every": 1000,
    "log_every": 50,
    "model.dtype": "bfloat16",
    "optim.schedule": "wsd",
    "eval.num_points": 6,
    "eval.probe_train_examples": 20000,
    "eval.probe_test_examples": 4000,
}


def get_sweep() -> Sweep:
    warmup = warmup_fraction(0.05, at_most=2000)
    return Sweep("objectives_vs_compute",
                 grid(available_objectives(), SIZES, BUDGETS, fields=FIELDS, adjust=warmup))
