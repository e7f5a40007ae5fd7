"""The Objective protocol: the seam between the one trainer and each pre-training objective.

An objective is built from the run config and owns its model (backbone plus heads), its loss, its probe
features and its analytic FLOP count. The trainer calls only these methods and never asks which
objective it runs. Building one reads no data: its validation and FLOPs come from the config alone (a
sweep reads the FLOPs of every run it plans); what it needs from data (iGPT's palette) it loads in an
optional ``prepare()``, which the model state (scaling.state) calls before building the model.
"""

from __future__ import annotations

from typing import Protocol

import jax
import ml_collections
from flax import nnx

Array = jax.Array
Batch = dict[str, Array]


class Objective(Protocol):
    name: str

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
        """Analytic forward+backward training FLOPs for one example."""

    # Optional: ``write_samples(model, batch, rng, directory)`` writes what a person can look at
    # (image grids, captions) for a batch of test examples; the trainer calls it after training.
