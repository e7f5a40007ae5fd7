"""The ``zero_shot`` evaluation: the accuracy of an objective that scores classes
(scaling.evaluation.zero_shot) under its ``class_score_field``, where ``eval.zero_shot`` asks for it, at
every point or (``eval.zero_shot_points="final"``) the end-of-schedule one. The class scores are computed
in the test split's feature pass, or, when ``eval.zero_shot_examples`` scores fewer examples than the
probe's, in a pass of their own over the first of them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from scaling.evaluation.features import BatchFn, map_split
from scaling.evaluation.registry import Eval, Setup, Shared, register
from scaling.evaluation.zero_shot import make_zero_shot_fn, supports_zero_shot

PREDICTION = "class_prediction"  # the predicted class ids among the test pass's outputs


def first_examples(batches: Iterable[dict[str, np.ndarray]], count: int | None
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The batches cut after their first ``count`` examples (all when None)."""
    for batch in batches:
        if count is not None and count <= 0:
            return
        kept = batch if count is None else {key: value[:count] for key, value in batch.items()}
        count = None if count is None else count - len(kept["label"])
        yield kept


@register
class ZeroShot(Eval):
    name = "zero_shot"
    points = ("training", "checkpoint")

    @classmethod
    def available(cls, objective, config) -> bool:
        return config.eval.zero_shot and supports_zero_shot(objective)

    def __init__(self, setup: Setup):
        super().__init__(setup)
        state = setup.state
        self.predict_fn: BatchFn | None = None  # a probe label without class names has no prompts
        if setup.class_names:
            predict = make_zero_shot_fn(state.objective, state.model, setup.class_names)
            self.predict_fn = jax.jit(lambda p, x, rng: {PREDICTION: predict(p, x, rng)})
        self.scored = setup.config.eval.get("zero_shot_examples", 0) or None  # the first of the probe's

    def due(self, end_of_schedule: bool) -> bool:
        return self.setup.config.eval.zero_shot_points == "all" or end_of_schedule

    def apart(self, max_test: int | None) -> bool:
        """Whether fewer test examples are scored than probed, in a pass of their own."""
        return self.scored is not None and (max_test is None or self.scored < max_test)

    def test_head(self, max_test: int | None) -> BatchFn | None:
        return None if self.apart(max_test) else self.predict_fn

    def __call__(self, shared: Shared) -> dict[str, Any]:
        if self.predict_fn is None:
            return {}
        if self.apart(shared.max_test):
            e, setup = self.setup.config.eval, self.setup
            batches = first_examples(setup.images.batches(e.test_split, shared.max_test), self.scored)
            outputs, labels = map_split(self.predict_fn, shared.params, batches, mesh=setup.state.mesh,
                                        batch_size=e.batch_size, seed=setup.config.seed)
            predictions = outputs[PREDICTION]
        else:
            predictions, labels = shared.test_outputs[PREDICTION], shared.test[1]
        return {self.setup.state.objective.class_score_field: float(np.mean(predictions == labels))}
