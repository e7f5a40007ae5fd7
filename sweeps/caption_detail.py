"""Caption detail: does descriptive language make training more compute-efficient, and does a model trained
on mostly descriptive captions also do better when later used with short ones?

    scaling sweep sweeps/caption_detail.py        # runs/caption_detail/
    scaling analyze runs/caption_detail           # fits per training mix, caption-detail figures

CLIP, captioning and caption-conditioned diffusion, each trained on short captions only, descriptive
captions only and the 95/5 descriptive/short mix (DALL-E 3's recipe; ``data.caption_mix``), on the
embedded scenes (32x32) at three sizes and, with warmup-stable-decay runs that fork a cool-down branch at
each earlier eval point, five honest compute points per size across two decades, two seeds each. Every
run is evaluated on short and on descriptive captions of 2,000 held-out scenes (``eval.caption_levels``):
CLIP image-text retrieval (recall@1/5), the captioner's log-likelihood per token, the diffusion model's
loss per noise bucket with and without a caption (and with another scene's caption), next to the
image-side linear probes of the main shape, count and colour and CLIP's and the captioner's zero-shot
accuracy.

Compute is matched with text included: a descriptive caption is 250 byte tokens against a short one's 20,
so at equal FLOPs a short-only model sees more images. Text sequences are as long as a run's longest
training caption, so a short-only model reads the first 18 bytes of a descriptive caption at evaluation
(it has no positions beyond them). The CPU-sized sibling is ``sweeps/caption_detail_cpu.py``.
"""

from scaling.sweeps.spec import Budget, Sweep, grid, warmup_fraction

OBJECTIVES = ("clip", "captioning", "diffusion")
MIXES = ("short:1", "descriptive:1", "descriptive:0.95,short:0.05")
SIZES = ("ti", "s", "m")
TOP_BUDGET = 1e18
SEEDS = (0, 1)
FIELDS = {
    "batch_size": 1024,
    "checkpoint_every": 1000,
    "log_every": 50,
    "model.dtype": "bfloat16",
    "optim.schedule": "wsd",
    "eval.num_points": 5,
    "eval.first_fraction": 0.01,
    "eval.extra_labels": ("count", "color"),
    "eval.probe_train_examples": 20000,
    "eval.probe_test_examples": 4000,
    "eval.caption_levels": ("short", "descriptive"),
    "eval.caption_examples": 2000,
    "eval.caption_level": "short",
}
ZERO_SHOT = ("clip", "captioning")


def get_sweep() -> Sweep:
    runs = []
    for objective in OBJECTIVES:
        runs += grid([objective], SIZES, [Budget.flops(TOP_BUDGET)], SEEDS,
                     fields={**FIELDS, "eval.zero_shot": objective in ZERO_SHOT},
                     axes={"data.caption_mix": MIXES}, adjust=warmup_fraction(0.02, at_most=2000))
    return Sweep("caption_detail", runs)
