"""Quickstart study: every registered objective x two tiny sizes x two FLOP budgets on the embedded scenes.

    scaling sweep sweeps/quickstart.py            # runs/quickstart/: results.csv, compute_vs_probe.png

Sized for a laptop: with 4 objectives, 16 short runs with two probe points each, about 10 minutes on
2 CPU cores. Budgets are compute-matched, so the larger model takes fewer steps. The warmup-stable-decay
schedule forks a cool-down branch at the first probe point, so each run gives two honest compute points
for ``scaling analyze runs/quickstart``. At these budgets the probes stay near chance; the study proper is
sweeps/objectives_vs_compute.py.
"""

from scaling.sweeps.spec import Budget, Sweep, available_objectives, grid, warmup_fraction

SIZES = ("mu", "micro")
BUDGETS = (Budget.flops(1e11), Budget.flops(3e11))
FIELDS = {
    "batch_size": 32,
    "checkpoint_every": 50,
    "log_every": 5,
    "optim.learning_rate": 2e-3,
    "optim.schedule": "wsd",
    "eval.num_points": 2,
    "eval.first_fraction": 0.25,
    "eval.probe_train_examples": 1000,
    "eval.probe_test_examples": 250,
}


def get_sweep() -> Sweep:
    runs = grid(available_objectives(), SIZES, BUDGETS, fields=FIELDS, adjust=warmup_fraction(0.1))
    return Sweep("quickstart", runs)
