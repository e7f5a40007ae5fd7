"""Learning-rate tuning for the CIFAR-10 study: every objective over a log grid of learning rates at sizes
mu, micro and nano, under the standard parametrisation and under µP, at one small budget.

    scaling sweep sweeps/tune_cifar10.py    # runs/tune_cifar10/
    scaling analyze runs/tune_cifar10       # report.md "Tuning" section, lr_optima.csv, lr_transfer_*.png

The runs are those of ``sweeps/cifar10_objectives.py`` (class-name captions for CLIP and captioning,
unconditional diffusion, iGPT at 16 pixels, batch 128) except for what tuning needs: a cosine schedule to
150 steps at every size, a warmup of 2,048 examples (16 steps), one probe point at the end (5,000
training and 5,000 test images). CIFAR-10 has no validation split, so the loss tuned on is the mean
training loss of the last fifth of the steps (150 x 128 examples are under one pass, so every batch is
new to the model: a held-out loss), and the probe error reads the test split (a choice made on test
numbers). The grid, 5e-4 to 6.4e-2 a factor 2 apart, holds the study's 1e-3; its top three points were
added when the first runs put mu's optimum at 8e-3 and then at 1.6e-2, the grid's top (iGPT,
diffusion). iGPT's loss at mu still fell to 6.4e-2, so its grid is 2e-3 to 1.28e-1 (its runs at 5e-4 and
1e-3, at mu only, were the worst of its grid by 0.7 nats or more, and stay in the results). An optimum
on its grid's edge is reported as "widen the grid".
At nano (width 128) each grid is 5 points a factor 2 apart (``log_grid``), centred where the drift from
mu to micro puts the optimum next: the grid point nearest micro's loss optimum times its ratio to mu's
(``scaling analyze`` of the mu and micro runs). CLIP: µP 5.8e-3 -> 3.2e-3, so 1.7e-3 and a centre of
2e-3; standard 5.8e-3 -> 1.9e-3, so 6.4e-4 and 5e-4. iGPT: µP 3.8e-2 -> 3.3e-2, so 2.9e-2 and 3.2e-2;
standard 3.8e-2 -> 1.7e-2, so 7.5e-3 and 8e-3. Diffusion: µP 3.3e-2 -> 2.1e-2, so 1.3e-2 and 1.6e-2;
standard 3.3e-2 -> 1.4e-2, so 5.8e-3 and 8e-3. Captioning: µP 1.18e-2 -> 1.28e-2, so 1.4e-2 and
1.6e-2; standard 1.18e-2 -> 7.0e-3, so 4.1e-3 and 4e-3. A nano optimum on its grid's edge gets the next point
added (``NANO_ADDED``): CLIP's µP probe error was lowest at its grid's top, 8e-3, so 1.6e-2 was added;
diffusion's µP probe error is lowest at 3.2e-2 but its fit bottoms out beyond the grid's top (about 0.19),
so 1.28e-1; captioning's probe error is lowest at the grid's lowest rate under both, so 2e-3 (µP) and
5e-4 (standard).
Runs go size by size (every objective at mu, then micro, then nano), so the cheap widths finish first;
iGPT's nano runs, each as long as the other objectives' ten nano runs together, go last.
"""

from scaling.data.cifar10_jpeg import CAPTION_TOKENS
from scaling.sweeps.spec import TUNING_LEARNING_RATES, Sweep, log_grid, tuning_runs

FIELDS = {
    "batch_size": 128,
    "checkpoint_every": 50,  # a run cut short (a session ending) resumes within 50 steps
    "log_every": 10,
    "optim.warmup_steps": 0,
    "optim.warmup_examples": 2048,
    "data.name": "cifar10_jpeg",
    "data.caption_level": "short",
    "data.max_caption_len": CAPTION_TOKENS,
    "eval.val_split": "",
    "eval.num_points": 1,
    "eval.zero_shot": False,
    "eval.probe_train_examples": 5000,
    "eval.probe_test_examples": 5000,
}
PER_OBJECTIVE = {
    "diffusion": {"diffusion.condition": "none"},
    "igpt": {"data.caption_level": "none"},
}
IGPT_RATES = (*TUNING_LEARNING_RATES[2:], 1.28e-1)
NANO_CENTRES = {("clip", "mup"): 2e-3, ("clip", "standard"): 5e-4,
                ("igpt", "mup"): 3.2e-2, ("igpt", "standard"): 8e-3,
                ("diffusion", "mup"): 1.6e-2, ("diffusion", "standard"): 8e-3,
                ("captioning", "mup"): 1.6e-2, ("captioning", "standard"): 4e-3}
NANO_ADDED = {("clip", "mup"): (1.6e-2,), ("diffusion", "mup"): (1.28e-1,), ("captioning", "mup"): (2e-3,),
              ("captioning", "standard"): (5e-4,)}


def rates(objective: str, size: str, parametrization: str) -> tuple[float, ...]:
    centre = NANO_CENTRES.get((objective, parametrization)) if size == "nano" else None
    if centre:
        return (*log_grid(centre, points=5), *NANO_ADDED.get((objective, parametrization), ()))
    return IGPT_RATES if objective == "igpt" else TUNING_LEARNING_RATES


def get_sweep() -> Sweep:
    igpt_nano_last = lambda run: run.config.objective == "igpt" and run.config.size == "nano"
    return Sweep("tune_cifar10", sorted(tuning_runs(FIELDS, PER_OBJECTIVE, rates=rates), key=igpt_nano_last))
