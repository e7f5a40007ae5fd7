"""The ``val_loss`` evaluation: the mean training loss over the first ``eval.val_batches`` full batches
of ``eval.val_split`` of the training data, captions at ``eval.caption_level``; at the trainer's points."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from scaling.data.caption_mix import eval_captions
from scaling.data.pipeline import make_eval_iterator
from scaling.evaluation.registry import Eval, Setup, Shared, register
from scaling.sharding import shard_batch


@register
class ValLoss(Eval):
    name = "val_loss"
    points = ("training",)

    @classmethod
    def available(cls, objective, config) -> bool:
        return bool(config.eval.val_split)

    def __init__(self, setup: Setup):
        super().__init__(setup)
        objective, to_model = setup.state.objective, setup.state.model
        self.loss_fn = jax.jit(lambda params, batch, rng: objective.loss(to_model(params), batch, rng)[0])

    def __call__(self, shared: Shared) -> dict[str, Any]:
        config = self.setup.config
        batch_size = config.batch_size
        local_size = batch_size // jax.process_count()
        batches = make_eval_iterator(
            eval_captions(config), config.eval.val_split, batch_size=batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            max_examples=batch_size * config.eval.val_batches,
        )
        mesh = self.setup.state.mesh
        losses = [
            float(self.loss_fn(shared.params, shard_batch(batch, mesh), jax.random.key(index)))
            for index, batch in enumerate(batches)
            if batch["label"].shape[0] == local_size
        ]
        return {"val_loss": float(np.mean(losses)) if losses else float("nan")}
