"""Registry of pre-training objectives; each lives in its own module and implements ``Objective``.

``build_objective`` constructs one from the config alone (no data is read: its FLOPs and validation need
none); ``validate_config`` checks a run config, the shared fields and then the objective's own section.

Adding an objective (``tests/objectives/test_added_objective.py`` adds rotation prediction this way):

1. ``scaling/objectives/<name>.py``: a class deriving from ``base.BaseObjective`` with ``name``, ``init``
   (backbone from scaling.models plus heads), ``loss``, ``features`` and ``train_flops_per_example``
   composed from the blocks in scaling.flops; ``validate`` for its own config section, if it has one.
   What else it can do it declares by also deriving from the optional protocols of ``base``:
   ``ZeroShotScorer``, ``CaptionScorer``, ``SampleWriter``, ``Prepared`` (reads data before its model is
   built). The trainer, evaluation and sweeps check those with ``isinstance`` and never branch on names.
2. ``experiments/<name>.py``: ``get_config(arg)`` from ``scaling.config.base_config("<name>", arg)``.
3. One line in ``OBJECTIVES`` below.
4. ``tests/objectives/test_<name>.py``: the loss falls through ``scaling.train.train``, and the FLOP count
   is within a few percent of XLA's (``tests/test_flops.py``, one parametrized line).
"""

from __future__ import annotations

import importlib

import ml_collections

from scaling.config import validate
from scaling.errors import ConfigError
from scaling.objectives.base import Objective

OBJECTIVES: dict[str, str] = {
    "clip": "scaling.objectives.clip:Clip",
    "igpt": "scaling.objectives.igpt:Igpt",
    "diffusion": "scaling.objectives.diffusion:Diffusion",
    "captioning": "scaling.objectives.captioning:Captioning",
    # the probe label's supervised ceiling (pretraining = False: no study compares it)
    "supervised": "scaling.objectives.supervised:Supervised",
}


def get_objective(name: str) -> type[Objective]:
    """The objective class registered under ``name``."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective: unknown {name!r}; choose one of {', '.join(OBJECTIVES)}")
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_objective(config: ml_collections.ConfigDict) -> Objective:
    """The objective ``config.objective`` names, built without reading any data."""
    return get_objective(config.objective)(config)


def validate_config(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """ConfigError for a run config that cannot work: the objective's name, the fields every objective
    shares (``scaling.config.validate``), then the objective's own section."""
    objective = get_objective(config.objective)
    validate(config, num_devices, process_count)
    objective.validate(config)
