"""The evaluations an eval record is made of: their one interface (``Eval``), the registry by name
(``register``) and the config's declaration of which run (``eval.evals``).

An evaluation is a class registered under its ``name``. ``available(objective, config)`` says whether it
applies to a run (a kind the objective cannot score, or one the config leaves empty, is skipped); it is
built from the ``Setup`` of an evaluation, where it checks its data and config (ConfigError) and compiles
what it runs, before any evaluation; called with the ``Shared`` passes of one evaluation point it returns
flat record fields. The split's features are computed once per point and handed to every evaluation; one
that needs more from the test images adds a ``test_head`` to that same pass. ``eval.evals`` lists the
names that run, in record order; adding an evaluation is one module that registers a class and one name
in that list.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ml_collections
import numpy as np

from scaling.errors import ConfigError
from scaling.evaluation.features import BatchFn, SplitImages
from scaling.state import ModelState

Features = tuple[dict[str, np.ndarray], np.ndarray]  # ({layer: [N, D]}, labels [N])
POINTS = ("training", "checkpoint", "init")
"""Where evaluations run: the trainer's eval points, ``scaling probe`` on a checkpoint, a run's
initialisation baseline (scaling.evaluation.init_probe)."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every evaluation is prepared against."""

    config: ml_collections.ConfigDict  # the run's: eval section (test split resolved), seed
    state: ModelState
    data: ml_collections.ConfigDict  # the probe data set and label
    class_names: tuple[str, ...]  # of the probe label; () when it has none
    features_fn: BatchFn  # pooled features per layer, of any split's images
    images: SplitImages  # the probe examples, read once for every evaluation


@dataclasses.dataclass(frozen=True)
class Shared:
    """One evaluation point: the parameters and the feature passes every evaluation reads."""

    params: Any
    train: Features
    test: Features
    test_outputs: dict[str, np.ndarray]  # what the evaluations' test heads computed in the test pass
    max_test: int | None  # the test examples asked for (None: all)
    train_per_class: int  # eval.probe_train_per_class of the train features (0: the first examples)


class Eval:
    """One kind of evaluation (see the module docstring); subclasses set ``name`` and register."""

    name: ClassVar[str]
    part: ClassVar[str] = ""  # its seconds' ``eval_s/<part>``; "" -> ``name``
    points: ClassVar[tuple[str, ...]] = POINTS  # where it runs

    def __init__(self, setup: Setup):
        self.setup = setup

    @classmethod
    def available(cls, objective, config: ml_collections.ConfigDict) -> bool:
        return True

    def due(self, end_of_schedule: bool) -> bool:
        """Whether it runs at this point (every one unless it says otherwise)."""
        return True

    def test_head(self, max_test: int | None) -> BatchFn | None:
        """A function of the test images whose outputs join ``Shared.test_outputs`` (None: none)."""
        return None

    def __call__(self, shared: Shared) -> dict[str, Any]:
        raise NotImplementedError


REGISTRY: dict[str, type[Eval]] = {}


def register(cls: type[Eval]) -> type[Eval]:
    """Class decorator: ``cls`` can be named in ``eval.evals``."""
    REGISTRY[cls.name] = cls
    return cls


def part_of(cls: type[Eval]) -> str:
    return cls.part or cls.name


def declared(config: ml_collections.ConfigDict) -> tuple[type[Eval], ...]:
    """The registered classes of ``eval.evals``, in order; ConfigError naming the registered ones for an
    unknown name."""
    names = tuple(config.eval.evals)
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise ConfigError(f"eval.evals: {unknown} not registered; choose among {sorted(REGISTRY)}")
    return tuple(REGISTRY[name] for name in names)
