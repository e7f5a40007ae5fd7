"""Registry of pre-training objectives; each lives in its own module and implements ``Objective``.

``build_objective`` constructs one from the config alone (no data is read: its FLOPs and validation need
none); ``validate_config`` checks a run config, the shared fields and then the objective's own section.
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
