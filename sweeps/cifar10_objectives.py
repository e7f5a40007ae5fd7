"""CIFAR-10 study: the four objectives at three sizes, 1.5 decades of training FLOPs, on 2 CPU cores.

    scaling sweep sweeps/cifar10_objectives.py   # runs/cifar10_objectives/
    scaling analyze runs/cifar10_objectives

The same ladder as ``sweeps/scenes_objectives.py`` (one warmup-stable-decay run per objective and size
with cool-down branches at 1/32 and 1/5.7 of its compute, a second seed at the smallest budget) on
CIFAR-10 (JPEG copy, ``../shared/data/cifar10-jpeg``: 50,000 training and 10,000 test images).

- iGPT (16x16 pixels, as its experiment file) and diffusion (unconditional) see images only.
- CLIP and captioning train on each image's class name in a template ("a blurry photo of a cat.",
  ``scaling.data.cifar10_jpeg.CAPTION_TEMPLATES``): language as supervision by the label, not natural
  captions, and reported as such. Zero-shot prompts are these templates (``prompt_templates``); the
  published runs were scored with generic ones, and their README gives both.
- Probes: the class label, 10,000 training and all 10,000 test images, all layers, next to the raw-pixel
  probe of the same examples (the data README's reference, logistic regression on standardised 2x2-pooled
  pixels, is 41.5%; ours probes unpooled pixels with the same C selection as every model).
- CIFAR-10 has no validation split, so no validation loss is recorded.
- Learning rate and b2 per objective from ``sweeps/tuned.csv`` (``scaling.sweeps.tuned``), which says
  whether and by which run each was tuned (the published runs: 1e-3 and 0.95, not tuned).

Sizing: the class captions are short (41 byte tokens at most), so a CLIP or captioning example costs a
fifth of a descriptive scenes one and the same budgets would take about 3x the steps (mu diffusion alone
3,400 at batch 64, near 0.4 s each here). Batch 128 and top budgets of 2e12 / 6e12 / 2e13 FLOPs keep the
main runs near 5,000 steps in all, about an hour of steps at the scenes study's rates, plus ~40 evals
over 20,000 images each.
"""

from collections.abc import Iterable
from typing import Any

from scaling.data.cifar10_jpeg import CAPTION_TOKENS
from scaling.sweeps.spec import RunSpec, Sweep, available_objectives, warmup_fraction, wsd_ladder
from scaling.sweeps.tuned import tuned_fields

TOP_BUDGETS = {"mu": 2e12, "micro": 6e12, "nano": 2e13}
FIELDS = {
    "batch_size": 128,
    "checkpoint_every": 200,
    "log_every": 20,
    "data.name": "cifar10_jpeg",
    "data.caption_level": "short",
    "data.max_caption_len": CAPTION_TOKENS,
    "eval.val_split": "",
    "eval.probe_train_examples": 10000,
    "eval.probe_test_examples": 10000,
}
PER_OBJECTIVE = {
    "clip": {"eval.zero_shot": True},
    "captioning": {"eval.zero_shot": True},
    "diffusion": {"eval.zero_shot": False, "diffusion.condition": "none"},
    "igpt": {"eval.zero_shot": False, "data.caption_level": "none"},
}


def ladder_runs(objectives: Iterable[str] = tuple(available_objectives()), sizes: Iterable[str] = TOP_BUDGETS,
                budget_divisor: float = 1.0, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """The study's ladders for these objectives and sizes, each top budget divided by ``budget_divisor`` and
    ``overrides`` set over the study's fields (the miniature of ``benchmarks/study_eval_share.py``)."""
    fields = lambda objective: {**FIELDS, **tuned_fields("cifar10_objectives", objective),
                                **PER_OBJECTIVE.get(objective, {}), **(overrides or {})}
    return wsd_ladder(objectives, {size: TOP_BUDGETS[size] / budget_divisor for size in sizes}, fields,
                      adjust=warmup_fraction(0.02))


def get_sweep() -> Sweep:
    return Sweep("cifar10_objectives", ladder_runs())
