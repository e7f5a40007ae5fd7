"""Learning-rate tuning for the scenes study: every objective over a log grid of learning rates under µP
at sizes mu and micro, at one small budget.

    scaling sweep sweeps/tune_scenes.py     # runs/tune_scenes/
    scaling analyze runs/tune_scenes        # report.md "Tuning" section, lr_optima.csv, lr_transfer_*.png

The runs are those of ``sweeps/scenes_objectives_v2.py`` (embedded scenes, batch 64, µP with base width
32, unconditional diffusion, iGPT without text; CLIP and captioning on descriptive captions, the dearest
rung of its language ladder, whose rungs share one rate) except for what tuning needs: a cosine schedule
to 150 steps (past initialisation: the analysis counts a point as trained from 100 steps), a warmup of
1,024 examples (16 steps), one probe point at the end (2,000 training and 1,000 test scenes, the shape
label) and the validation loss (2 batches), which the analysis tunes on. The grids are CIFAR-10's
(``sweeps/tune_cifar10.py``), which bracketed every objective's optimum at mu and micro. Only µP, and only
the two narrow widths: the CIFAR-10 tuning measured how far µP's optimum moves with width
(``docs/results/lr_transfer/``), and the v2 rate is micro's, as there. At mu, the base width, µP and the
standard parametrisation are the same network, so the standard runs would repeat these.
How long: 62 runs, 1.35e14 training FLOPs (``--dry-run``), 80% of it at micro: at the 15-30 GFLOP/s
these 2 cores reach at these widths, 1.5 to 3 hours of steps.
"""

from scaling.config import load_python_file
from scaling.sweeps.spec import SWEEPS_DIR, Sweep, tuning_runs

CIFAR10 = load_python_file(SWEEPS_DIR / "tune_cifar10.py")  # its grids
FIELDS = {
    "batch_size": 64,
    "checkpoint_every": 50,  # a run cut short (a session ending) resumes within 50 steps
    "log_every": 10,
    "optim.warmup_steps": 0,
    "optim.warmup_examples": 1024,
    "data.name": "scenes/32",
    "data.caption_level": "descriptive",
    "model.parametrization": "mup",
    "eval.num_points": 1,
    "eval.zero_shot": False,
    "eval.probe_train_examples": 2000,
    "eval.probe_test_examples": 1000,
}


def get_sweep() -> Sweep:
    return Sweep("tune_scenes", tuning_runs(FIELDS, CIFAR10.PER_OBJECTIVE, sizes=("mu", "micro"),
                                            rates=CIFAR10.rates, parametrizations=("mup",)))
