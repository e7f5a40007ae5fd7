"""Caption detail: how much does language help, and does more descriptive language help more?

CLIP and captioning trained on short, medium and descriptive captions of the same images at matched
compute; the "none" level is the image-only objectives (iGPT, diffusion) on the same budgets, since the
language objectives cannot train without text. Two sizes x two budgets x two seeds.
"""

from scaling.sweeps.spec import Budget, Sweep, available_objectives, grid, warmup_fraction

LANGUAGE = ("clip", "captioning")
IMAGE_ONLY = ("igpt", "diffusion")
LEVELS = ("short", "medium", "descriptive")
SIZES = ("ti", "s")
BUDGETS = (Budget.flops(1e17), Budget.flops(1e18))
SEEDS = (0, 1)
FIELDS = {
    "batch_size": 1024,
    "checkpoint_every": 1000,
    "log_every": 50,
    "model.dtype": "bfloat16",
    "eval.num_points": 6,
    "eval.probe_train_examples": 20000,
    "eval.probe_test_examples": 4000,
}


def get_sweep() -> Sweep:
    registered = available_objectives()
    runs = []
    for objectives, levels in ((LANGUAGE, LEVELS), (IMAGE_ONLY, ("none",))):
        runs += grid([o for o in objectives if o in registered], SIZES, BUDGETS, SEEDS, fields=FIELDS,
                     axes={"data.caption_level": levels}, adjust=warmup_fraction(0.05, at_most=2000))
    return Sweep("caption_detail", runs)
