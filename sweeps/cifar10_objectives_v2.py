"""CIFAR-10 study, v2: every frontier point a trained network, tuned learning rates, three seeds at the top.

    scaling sweep sweeps/cifar10_objectives_v2.py     # runs/cifar10_objectives_v2/
    scaling analyze runs/cifar10_objectives_v2 --reference 'raw pixels, 2x2-pooled (data README)=0.415'

The same data, captions and probe as ``sweeps/cifar10_objectives.py`` (class names in templates for CLIP
and captioning, unconditional diffusion, iGPT at 16 pixels; the class label probed on 10,000 training
and all 10,000 test images at every layer, beside the raw-pixel probe of the same examples), with what the
first study lacked:

- **Trained points.** A point enters a fit only with 100 or more optimizer steps and above its own init
  (``scaling analyze --min-steps``). Each size trains one warmup-stable-decay run to 3e13 FLOPs (iGPT
  9e13, below), evaluated at log-spaced fractions of its compute with a cool-down branch at each but the
  last: mu at five, from 1/36 (8.3e11 FLOPs), micro and nano at four, from 1/16 (1.9e12), so the sizes'
  later points fall within 9% of each other's compute (about 2e12, 5e12, 1.2e13 and 3e13: the report's
  isoFLOP view groups them). At batch 128, CLIP's step costs 2.6e9
  / 1.4e10 / 6.8e10 FLOPs at mu / micro / nano, captioning's 3.4e9 / 1.7e10 / 8.1e10, diffusion's 1.8e9
  / 8.8e9 / 4.3e10 (the first study's records), so mu's first point has 240 (captioning) to 470
  (diffusion) steps and micro's 110 to 210. iGPT's step costs 1.45e10 / 5.5e10 / 2.2e11 (256 pixel
  tokens per image), so its budgets are 3x: mu's first point at 2.5e12 FLOPs has 172 steps.
  Mu trains to the top budget because it holds the frontier there: in this study's first runs CLIP mu
  at 1e13 FLOPs probed 65.1%, above micro at 3e13 (61.8%) and nano (51.7%), so with mu stopped at 1e13
  (as first planned) CLIP's trained frontier was mu's four points alone, 1.1 decades. A cool-down branch
  ends at 1.2x the compute of its fork, so mu's branches and end span 1.48 decades (1.0e12 to 3e13); a
  second seed trains mu on its own to its first point's budget (8.3e11; iGPT 2.5e12), a schedule's end
  of its own, so mu holds six points over 1.56 decades whichever size wins above them.
- **Three sizes at the two largest budgets**: every size trains to the top budget, so their points at
  1.2e13 and 3e13 FLOPs (3.6e13 and 9e13 for iGPT) are the isoFLOP comparison of sizes there.
- **Three seeds at the top**: nano trains seeds 1 and 2 beside seed 0, to the top budget, evaluated at
  its end only. Nano's earlier points are too short to enter a fit (27, 70 and 175 of CLIP's 439 steps,
  where micro at the same compute trains 2.5x as many), so their cool-down branches and probes in two
  more seeds would be spent on nothing; nano's seed 0 keeps them for the isoFLOP view.
- **Tuned optimizers**: each objective's learning rate, b2 and warmup come from ``sweeps/tuned.csv``
  (rows ``cifar10_objectives_v2``, each naming the tuning run behind it), under µP with base width 32
  (``model.parametrization``), so a rate tuned on the narrow sizes holds at nano.
- **Baselines in the same table**: every run's init probe (step 0, cached per initialisation), the
  raw-pixel floor of the same examples, and the supervised classifier of the label on the same ladder
  and budgets (the ceiling: "is it the label or the language?").
- Zero-shot is recorded for CLIP and captioning with the class templates, at the end of each schedule
  only (``eval.zero_shot_points=final``), as in the scenes study: at every point the captioner's scoring
  would take most of the evaluation time.

Cost (``--dry-run``): 1.14e15 training FLOPs, cool-down branches included (iGPT 0.49e15): at the 26
GFLOP/s a mu step reaches alone on these 2 CPU cores, about 12 hours of steps, and evaluation beside
them, so it runs over several sittings: the runner resumes.
"""

from collections.abc import Iterable
from typing import Any

from scaling.config import load_python_file
from scaling.sweeps.spec import SWEEPS_DIR, RunSpec, Sweep, available_objectives, wsd_ladder
from scaling.sweeps.tuned import tuned_fields

V1 = load_python_file(SWEEPS_DIR / "cifar10_objectives.py")  # its data, captions and probe
STUDY = "cifar10_objectives_v2"
OBJECTIVES = (*available_objectives(), "supervised")
TOP_BUDGET = 3e13
LADDERS = {  # each size's evaluation points, and mu's second seed on its own to its first point's budget
    "mu": dict(points=5, first_fraction=1 / 36, extra_seeds=(1,)),
    "micro": dict(points=4, first_fraction=1 / 16, extra_seeds=()),
    "nano": dict(points=4, first_fraction=1 / 16, extra_seeds=()),
}
BUDGET_SCALE = {"igpt": 3.0}  # its step costs 3.2x to 5.6x the others' at the same size
TOP_SEEDS = (1, 2)  # beside seed 0, at nano's top budget
FIELDS = {**V1.FIELDS, "model.parametrization": "mup", "eval.zero_shot_points": "final"}
PER_OBJECTIVE = {**V1.PER_OBJECTIVE, "supervised": {"eval.zero_shot": False, "data.caption_level": "none"}}


def ladder_runs(objectives: Iterable[str] = OBJECTIVES, sizes: Iterable[str] = LADDERS,
                budget_divisor: float = 1.0, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """The study's ladders for these objectives and sizes, each top budget divided by ``budget_divisor`` and
    ``overrides`` set over the study's fields (the miniature of ``benchmarks/study_eval_share.py``)."""
    fields = lambda objective: {**FIELDS, **PER_OBJECTIVE[objective], **tuned_fields(STUDY, objective),
                                **(overrides or {})}
    runs = []
    for objective in objectives:
        top = TOP_BUDGET * BUDGET_SCALE.get(objective, 1.0) / budget_divisor
        for size in sizes:
            runs += wsd_ladder([objective], {size: top}, fields,
                               top_seeds=TOP_SEEDS if size == "nano" else (), **LADDERS[size])
    return runs


def get_sweep() -> Sweep:
    return Sweep(STUDY, ladder_runs())
