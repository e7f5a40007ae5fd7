"""The ``caption_levels`` evaluation: the held-out caption metrics of each of ``eval.caption_levels``
(scaling.evaluation.caption_levels), at the trainer's points and in ``scaling probe``."""

from __future__ import annotations

from typing import Any

from scaling.evaluation.caption_levels import CaptionLevelEval
from scaling.evaluation.registry import Eval, Setup, Shared, register


@register
class CaptionLevels(Eval):
    name = "caption_levels"
    points = ("training", "checkpoint")

    @classmethod
    def available(cls, objective, config) -> bool:
        return bool(config.eval.get("caption_levels", ()))

    def __init__(self, setup: Setup):
        super().__init__(setup)
        state = setup.state
        self.metrics = CaptionLevelEval(setup.config, state.objective, state.model, state.mesh)

    def __call__(self, shared: Shared) -> dict[str, Any]:
        return self.metrics(shared.params)
