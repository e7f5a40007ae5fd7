"""The objective contract: what the one trainer and the evaluation may ask of a pre-training objective.

An objective is built from the run config and owns its model (backbone plus heads), its loss, its probe
features and its analytic FLOP count (``Objective``; ``BaseObjective`` gives the defaults). Building one
reads no data: its validation and FLOPs come from the config alone (a sweep reads the FLOPs of every run
it plans). The trainer calls only these members and never asks which objective it runs.

What an objective may provide beyond that is one small protocol each, declared by subclassing it and
checked with ``isinstance``; a protocol's defaults are what an objective gets unless it overrides them:

- ``Prepared``: loads what it needs from data (iGPT's palette) before its model is built.
- ``SampleWriter``: writes what a person can look at (image grids, captions) after training.
- ``ZeroShotScorer``: scores class names without a trained probe (zero-shot accuracy).
- ``CaptionScorer``: per-example outputs on held-out captions at several detail levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import jax
import ml_collections
from flax import nnx

Array = jax.Array
Batch = dict[str, Array]


@runtime_checkable
class Objective(Protocol):
    name: str
    pretraining: bool  # False for a reference (the supervised ceiling) that no study compares

    def __init__(self, config: ml_collections.ConfigDict): ...

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        """Raise scaling.errors.ConfigError for objective-specific values that cannot work."""

    def init(self, rngs: nnx.Rngs) -> nnx.Module:
        """Backbone and heads; every parameter carries logical axis names."""

    def loss(self, model: nnx.Module, batch: Batch, rng: Array) -> tuple[Array, dict[str, Array]]:
        """Scalar loss and a dict of scalar metrics; jit-able."""

    def features(self, model: nnx.Module, images: Array, rng: Array) -> dict[str, Array]:
        """Pooled image features per layer, e.g. {"layer_01": [B, D], ...}."""

    def train_flops_per_example(self) -> float:
        """Analytic forward+backward training FLOPs for one example (built from scaling.flops)."""


class BaseObjective:
    """Defaults of the ``Objective`` members: holds the config, a pre-training objective, no checks of its
    own beyond the shared validation."""

    name: str
    pretraining = True

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        """Every value it reads is checked by the shared validation."""


@runtime_checkable
class Prepared(Protocol):
    def prepare(self) -> None:
        """Loads (or fits and caches) what the model needs from data; the model state calls it once before
        building the model, so constructing the objective stays free of I/O."""


@runtime_checkable
class SampleWriter(Protocol):
    def write_samples(self, model: nnx.Module, batch: Batch, rng: Array, directory: Path) -> None:
        """Writes samples for a batch of test examples into ``directory``; called after training."""


@runtime_checkable
class ZeroShotScorer(Protocol):
    def zero_shot_scores(self, model: nnx.Module, images_BHWC: Array, class_names: tuple[str, ...],
                         rng: Array) -> Array:
        """[B, K] class scores, higher is better; jit-able."""

    @property
    def zero_shot_available(self) -> bool:
        """Whether this config can score classes (e.g. not an unconditional diffusion model)."""
        return True

    @property
    def class_score_field(self) -> str:
        """The record field of the accuracy of these scores."""
        return "zero_shot_accuracy"

    def check_class_names(self, class_names: tuple[str, ...]) -> None:
        """ConfigError for classes this model cannot score, raised before any evaluation runs."""


@runtime_checkable
class CaptionScorer(Protocol):
    def caption_outputs(self, model: nnx.Module, images_BHWC: Array,
                        captions: dict[str, tuple[Array, Array]], rng: Array) -> dict[str, Array]:
        """Per-example outputs on held-out captions, ``captions`` mapping each detail level to its
        (tokens [B, T], mask [B, T]); scaling.evaluation.caption_levels reduces them by name."""

    @property
    def caption_outputs_available(self) -> bool:
        """Whether this config reads captions at all (e.g. a caption-conditioned diffusion model)."""
        return True
