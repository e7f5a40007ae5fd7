"""Scenes study, v2: a language ladder on the same images and budgets, every frontier point a trained
network, tuned learning rates, three seeds at the top.

    scaling sweep sweeps/scenes_objectives_v2.py      # runs/scenes_objectives_v2/
    scaling analyze runs/scenes_objectives_v2 [--metric count_probe_error | color_probe_error]

The same scenes, batch and probes as ``sweeps/scenes_objectives.py`` (the main object's shape, the object
count and the main object's colour, probed on 4,000 training and 4,000 test scenes at every layer, beside
the raw-pixel probe of the same examples), with what the first study lacked:

- **A language ladder.** CLIP and captioning each train on three kinds of text about the same images:
  (a) ``label``, the main shape's name in a zero-shot template ("a photo of a triangle": language as the
  label, ``data.caption_field=label``), (b) ``short`` captions (the main object's colour and shape, "a red
  triangle") and (c) ``descriptive`` ones (every object's size, colour, shape and place, and the
  background). iGPT and unconditional diffusion are the rungs without language, and the supervised
  classifier of the shape, on the same ladder of sizes and budgets, the ceiling for that attribute. The
  analysis names each rung's series ``clip/label``, ``clip/short``, ... Read across the rungs, the probes
  say whether a caption that names more than the label (colour, count) gives better features for what it
  names, per FLOP, or only the label's.
- **Trained points.** Text is counted in the compute, so a descriptive caption costs CLIP 5.7x and
  captioning 6.1x a templated label at mu (100 steps of 64: 6.3e11 and 8.3e11 FLOPs against 1.1e11 and
  1.4e11; iGPT 7.3e11, diffusion 0.9e11, ``--dry-run`` of 100-step runs). All rungs share one set of
  budgets, sized for the dearest, and the CIFAR-10 v2 study's evaluation points
  (``sweeps/cifar10_objectives_v2.py``): every size trains one warmup-stable-decay run to 3e13 FLOPs, mu
  evaluated at five log-spaced fractions of it from 1/36, micro and nano at four from 1/16, with a
  cool-down branch at each but the last, and mu's second seed on its own to its first point's budget.
  Mu's first point (8.3e11) has 100 steps or more on every rung (100 for descriptive captioning, 115 for
  iGPT, 133 for descriptive CLIP). Mu trains to the top because on CIFAR-10 it held CLIP's frontier there
  (that study's README), so every series' frontier can hold 6 trained points over 1.56 decades (8.3e11
  to 3e13; the branches alone, ending at 1.2x their fork's compute, span 1.48) whichever size wins; the
  cheap rungs train for thousands of steps.
- **Three sizes at the two largest budgets**: their points at 1.2e13 and 3e13 FLOPs are the isoFLOP
  comparison of sizes there.
- **Three seeds at the top**: nano trains seeds 1 and 2 beside seed 0, to the top budget, evaluated at
  its end only: nano's first point is under 100 steps on every rung (13 to 89), and micro trains more
  steps at each of its points' compute, so two more seeds' cool-down branches and earlier probes would
  buy nothing a fit uses; nano's seed 0 keeps them for the isoFLOP view.
- **Tuned optimizers**: each objective's learning rate, b2 and warmup from ``sweeps/tuned.csv`` (rows
  ``scenes_objectives_v2``), under µP with base width 32, so a rate tuned on the narrow sizes holds at
  nano; the rungs of one objective share its rates.
- **Baselines in the same table**: every run's init probe (step 0), the raw-pixel floor of the same
  examples, and the supervised ceiling.
- Zero-shot accuracy (CLIP and captioning, the shape in the zero-shot templates) at the end of each
  schedule only (``eval.zero_shot_points=final``): the captioner's scoring would otherwise take most of the
  evaluation time.

Cost (``--dry-run``): 9 series x (2 mu seeds + micro + 3 nano seeds), 1.46e15 training FLOPs, cool-down
branches included: at the 26 GFLOP/s a mu step reaches alone on these 2 CPU cores, about 15 hours of
steps, so it runs over several sittings (the runner resumes).
"""

from scaling.config import load_python_file
from scaling.data.captions import TEMPLATES
from scaling.data.scenes import SHAPES
from scaling.sweeps.spec import SWEEPS_DIR, Sweep, wsd_ladder
from scaling.sweeps.tuned import tuned_fields

V1 = load_python_file(SWEEPS_DIR / "scenes_objectives.py")  # its data, batch and probes
CIFAR10_V2 = load_python_file(SWEEPS_DIR / "cifar10_objectives_v2.py")  # its budget and evaluation points
STUDY = "scenes_objectives_v2"
TOP_SEEDS = (1, 2)  # beside seed 0, at nano's top budget
LABEL_TOKENS = 2 + max(len(template.format(shape)) for template in TEMPLATES for shape in SHAPES)  # bytes
LADDER = (  # the text of each rung, its axis named in the run ids
    {"data.caption_field": ("label",), "data.max_caption_len": (LABEL_TOKENS,)},
    {"data.caption_level": ("short",)}, {"data.caption_level": ("descriptive",)},
)
WITH_TEXT = {"eval.zero_shot": True}
WITHOUT_TEXT = {"data.caption_level": "none", "eval.zero_shot": False}
SERIES = [  # (objective, its fields, its text axis): a rung of the ladder each
    *[(objective, WITH_TEXT, text) for objective in ("clip", "captioning") for text in LADDER],
    ("igpt", WITHOUT_TEXT, {}), ("diffusion", {**WITHOUT_TEXT, "diffusion.condition": "none"}, {}),
    ("supervised", WITHOUT_TEXT, {}),
]
FIELDS = {**V1.FIELDS, "model.parametrization": "mup", "eval.zero_shot_points": "final"}


def get_sweep() -> Sweep:
    """Size by size (every series at mu, then micro, then nano), so each series' cheap points come first."""
    runs = []
    for size, ladder in CIFAR10_V2.LADDERS.items():
        for objective, own, text in SERIES:
            fields = lambda objective, own=own: {**FIELDS, **own, **tuned_fields(STUDY, objective)}
            runs += wsd_ladder([objective], {size: CIFAR10_V2.TOP_BUDGET}, fields, axes=text,
                               top_seeds=TOP_SEEDS if size == "nano" else (), **ladder)
    return Sweep(STUDY, runs)
