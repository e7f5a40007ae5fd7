"""Registry of pre-training objectives; each lives in its own module and implements ``Objective``."""

from __future__ import annotations

import importlib

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
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_objective(config) -> Objective:
    return get_objective(config.objective)(config)
