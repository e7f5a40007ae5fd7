"""Adding an objective takes one module, one config, one registry line and one test: a fifth objective
(rotation prediction, Gidaris et al. 2018) defined here trains through the one trainer, with its FLOPs
composed from scaling.flops and no optional protocol, so evaluation neither scores classes nor captions."""

import json

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from scaling import flops
from scaling.evaluation.caption_levels import supports_caption_levels
from scaling.evaluation.zero_shot import supports_zero_shot
from scaling.models.layers import Dense
from scaling.models.sizes import get_size
from scaling.models.transformer import ImageTower, Stacking, pooled_layer_features
from scaling.objectives import OBJECTIVES, base
from scaling.train import train

ROTATIONS = 4


class RotationModel(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        size, dtype = get_size(config.size), jnp.dtype(config.model.dtype)
        self.image = ImageTower(size, image_size=config.data.image_size, patch=config.model.patch_size,
                                positions=config.model.positions, dtype=dtype, rngs=rngs,
                                stacking=Stacking.of(config.model))
        self.head = Dense((size.width,), (ROTATIONS,), ("embed", None), dtype=dtype, rngs=rngs)


class Rotation(base.BaseObjective):
    """Predicts which multiple of 90 degrees each image was rotated by."""

    name = "rotation"

    def init(self, rngs):
        return RotationModel(self.config, rngs=rngs)

    def loss(self, model, batch, rng):
        images_BHWC = batch["image"]
        turns_B = jax.random.randint(rng, images_BHWC.shape[:1], 0, ROTATIONS)
        rotated_RBHWC = jnp.stack([jnp.rot90(images_BHWC, k, axes=(1, 2)) for k in range(ROTATIONS)])
        images_BHWC = jnp.take_along_axis(rotated_RBHWC, turns_B[None, :, None, None, None], axis=0)[0]
        out_BLD, _ = model.image(images_BHWC)
        logits_BR = model.head(out_BLD.mean(axis=1)).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits_BR, turns_B).mean()
        return loss, {"rotation_accuracy": (logits_BR.argmax(axis=1) == turns_B).mean()}

    def features(self, model, images_BHWC, rng):
        return pooled_layer_features(model.image(images_BHWC)[1])

    def train_flops_per_example(self):
        c, size = self.config, get_size(self.config.size)
        tower = flops.image_tower_forward(size, c.data.image_size, c.model.patch_size)
        return flops.TRAIN_MULTIPLIER * (tower + flops.dense(1, size.width, ROTATIONS))


def test_a_fifth_objective_trains_through_the_one_trainer(tiny_config, monkeypatch, tmp_path):
    monkeypatch.setitem(OBJECTIVES, "rotation", f"{__name__}:Rotation")
    config = tiny_config("supervised", total_steps=30, **{"optim.learning_rate": 3e-3, "eval.num_points": 0})
    config.objective = "rotation"
    objective = Rotation(config)
    assert isinstance(objective, base.Objective) and objective.pretraining
    assert not isinstance(objective, base.ZeroShotScorer | base.CaptionScorer | base.SampleWriter)
    assert not supports_zero_shot(objective) and not supports_caption_levels(objective)

    result = train(config, tmp_path)

    assert result["status"] == "completed"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert steps[-1]["flops"] == pytest.approx(30 * config.batch_size * objective.train_flops_per_example())
    assert sum(r["loss"] for r in steps[-2:]) / 2 < steps[0]["loss"] - 0.1
