"""The ``pixel_floor`` evaluation: the raw-pixel probe of the very examples the features were probed on
(``pixel_probe_accuracy``, cached by scaling.evaluation.pixel_reference), the floor learned features must
clear; at the trainer's points and a run's initialisation, not in ``scaling probe``."""

from __future__ import annotations

from typing import Any

from scaling.evaluation.pixel_reference import pixel_reference
from scaling.evaluation.registry import Eval, Shared, register


@register
class PixelFloor(Eval):
    name = "pixel_floor"
    points = ("training", "init")

    def __call__(self, shared: Shared) -> dict[str, Any]:
        e = self.setup.config.eval
        return pixel_reference(self.setup.data, train_split=e.train_split, test_split=e.test_split,
                               train_examples=len(shared.train[1]), test_examples=len(shared.test[1]),
                               seed=self.setup.config.seed, train_per_class=shared.train_per_class)
