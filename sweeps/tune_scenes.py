"""Learning-rate tuning for the scenes study: every objective over a log grid of learning rates at sizes mu,
micro and nano, under the standard parametrisation and under µP, at one small budget.

    scaling sweep sweeps/tune_scenes.py     # runs/tune_scenes/
    scaling analyze runs/tune_scenes        # report.md "Tuning" section, lr_optima.csv, lr_transfer_*.png

The runs are those of ``sweeps/scenes_objectives.py`` (embedded scenes, descriptive captions, batch 64)
except for what tuning needs: a cosine schedule to 150 steps at every size (past initialisation: the
analysis counts a point as trained from 100 steps), a warmup of 1,024 examples (16 steps), one probe
point at the end (2,000 training and 1,000 test scenes, the shape label) and the validation loss. The
grid, 5e-4 to 6.4e-2 a factor 2 apart, holds the study's 1e-3 and, under µP with base width 32, rates up
to 64x the one every nano matrix learns at (its top points were added when the CIFAR-10 tuning put mu's
optimum at the top of a grid ending at 1.6e-2). Runs go size by size, so the cheap widths finish first.
An optimum on the grid's edge is reported as "widen the grid".
How long: 192 runs, 1.27e15 training FLOPs (``--dry-run``), 76% of it at nano. Timed here with 40-step
``scaling train`` runs of this sweep's fields under µP while other jobs held the 2 cores (load 5 to 12):
nano steps at 18 (CLIP), 16 (captioning), 13 (diffusion) and 14 (iGPT) GFLOP/s, mu CLIP at 13; an init
plus a final probe took 16 s (mu CLIP) to 70-290 s (nano; iGPT the slowest). At those rates: about 24 h
of steps, 5 h of evaluation and 1.5 h of compiles, so about 30 h; on free cores (nano near 60 GFLOP/s,
mu and micro 15-30) about 11 h.
"""

from scaling.sweeps.spec import Sweep, tuning_runs

FIELDS = {
    "batch_size": 64,
    "checkpoint_every": 150,
    "log_every": 10,
    "optim.warmup_steps": 0,
    "optim.warmup_examples": 1024,
    "data.name": "scenes/32",
    "data.caption_level": "descriptive",
    "eval.num_points": 1,
    "eval.zero_shot": False,
    "eval.probe_train_examples": 2000,
    "eval.probe_test_examples": 1000,
}


def get_sweep() -> Sweep:
    return Sweep("tune_scenes", tuning_runs(FIELDS))
