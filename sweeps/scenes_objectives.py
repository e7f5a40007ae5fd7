"""Scenes study: the four objectives at three sizes, 1.5 decades of training FLOPs, on 2 CPU cores.

    scaling sweep sweeps/scenes_objectives.py   # runs/scenes_objectives/
    scaling analyze runs/scenes_objectives [--metric count_probe_error]

The CPU-sized study behind the README's headline: iGPT (pixels only), CLIP, captioning and
caption-conditioned diffusion on the embedded scenes with descriptive captions (250 byte tokens: the
text towers' compute is counted like the image towers'), at sizes mu, micro and nano. Each
(objective, size) is one warmup-stable-decay run to its top budget (mu 3e12, micro 1e13, nano 3e13
FLOPs) whose earlier eval points at 1/32 and 1/5.7 of that compute fork a cool-down branch, so every size
has three honest points spanning 1.5 decades, and the sizes together 2.5 (9.4e10 to 3e13), for about
1.08x the cost of the longest runs. A second seed of every (objective, size) runs on its own to that
size's smallest budget, for the seed-to-seed spread (``scaling.sweeps.spec.wsd_ladder``).

Learning rate and b2 per objective come from ``sweeps/tuned.csv`` (``scaling.sweeps.tuned``), which says
whether and by which run each was tuned (the published runs: 1e-3 and 0.95, not tuned).

Each eval probes the shape of the main object (``label``, 8 classes), the object count (4) and the
main object's colour (8) on the same features, 4,000 training and 4,000 test scenes, all layers, each
next to the raw-pixel probe of the same examples. Zero-shot is recorded for CLIP and captioning; the
diffusion classifier is left out (about a minute per eval here).

How it was sized: at batch 64 the float32 steps here ran at 15-30 GFLOP/s for mu and micro and about
60 for nano (benchmarks/train_step.py-style timing of each objective with 250-token captions), so the
12 main runs take about 75 minutes of steps and the evals about 30. Top budgets grow with size so that
each size trains for hundreds of steps or more: nano CLIP sees ~16,000 examples at 3e13 FLOPs (1.9 GFLOP
each, most of it in the text tower), mu CLIP ~30,000 at 3e12.
"""

from scaling.sweeps.spec import Sweep, available_objectives, warmup_fraction, wsd_ladder
from scaling.sweeps.tuned import tuned_fields

TOP_BUDGETS = {"mu": 3e12, "micro": 1e13, "nano": 3e13}
FIELDS = {
    "batch_size": 64,
    "checkpoint_every": 200,
    "log_every": 20,
    "data.name": "scenes/32",
    "data.caption_level": "descriptive",
    "eval.extra_labels": ("count", "color"),
    "eval.probe_train_examples": 4000,
    "eval.probe_test_examples": 4000,
}
ZERO_SHOT = ("clip", "captioning")


def get_sweep() -> Sweep:
    fields = lambda objective: {**FIELDS, **tuned_fields("scenes_objectives", objective),
                                "eval.zero_shot": objective in ZERO_SHOT}
    return Sweep("scenes_objectives", wsd_ladder(available_objectives(), TOP_BUDGETS, fields,
                                                 adjust=warmup_fraction(0.02)))
