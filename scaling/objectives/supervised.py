"""Supervised classification of the probe label: the ceiling a pre-training objective's probe is read
against, not a pre-training objective of the comparison.

An image tower of the run's size, mean-pooled, and a linear head trained with cross-entropy on
``data.label``; features are the tower's layers, probed exactly like any objective's. ``pretraining`` is
False, so sweeps over ``available_objectives()`` never include it; ``benchmarks/probe_ceiling.py`` trains
it beside the quickstart's runs.
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import optax
from flax import nnx

from scaling import flops
from scaling.data.pipeline import label_classes
from scaling.models.chunks import in_chunks
from scaling.models.layers import Dense
from scaling.models.parametrization import Parametrization
from scaling.models.sizes import get_size
from scaling.models.transformer import ImageTower, Stacking, pooled_layer_features
from scaling.objectives.base import BaseObjective

Array = jax.Array


class SupervisedModel(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, *, rngs: nnx.Rngs):
        size, dtype = get_size(config.size), jax.numpy.dtype(config.model.dtype)
        self.image = ImageTower(
            size, image_size=config.data.image_size, patch=config.model.patch_size,
            positions=config.model.positions, dtype=dtype, rngs=rngs, stacking=Stacking.of(config.model),
        )
        self.head = Dense((size.width,), (num_classes,), ("embed", None), dtype=dtype, rngs=rngs,
                          scaling=Parametrization.of(config.model).readout(size.width))


class Supervised(BaseObjective):
    name = "supervised"
    pretraining = False  # a reference, not one of the objectives a study compares

    @functools.cached_property
    def num_classes(self) -> int:
        """Classes of data.label, read from the data set's metadata on first use (the model and its FLOPs
        need it; building the objective reads nothing)."""
        return label_classes(self.config.data)

    def init(self, rngs: nnx.Rngs) -> SupervisedModel:
        return SupervisedModel(self.config, self.num_classes, rngs=rngs)

    def loss(self, model: SupervisedModel, batch, rng: Array):
        del rng
        out_BLD, _ = model.image(batch["image"])
        logits_BK = model.head(out_BLD.mean(axis=1)).astype(jax.numpy.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits_BK, batch["label"]).mean()
        return loss, {"train_accuracy": (logits_BK.argmax(axis=1) == batch["label"]).mean()}

    def features(self, model: SupervisedModel, images_BHWC: Array, rng: Array) -> dict[str, Array]:
        del rng
        return in_chunks(lambda x_BHWC: pooled_layer_features(model.image(x_BHWC)[1]), images_BHWC)

    def train_flops_per_example(self) -> float:
        c = self.config
        size = get_size(c.size)
        tower = flops.image_tower_forward(size, c.data.image_size, c.model.patch_size)
        return flops.TRAIN_MULTIPLIER * (tower + flops.dense(1, size.width, self.num_classes))
