"""The ``fewshot`` evaluation: closed-form ridge probes (scaling.evaluation.fewshot) from k examples per
class of every layer, ``fewshot_{k}shot/<layer>``, for each k the training features hold. Few-shot has no
headline layer: the linear probe's best layer is chosen with every training label, which a k-shot result
must not lean on."""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.evaluation.fewshot import DEFAULT_FEWSHOT_SHOTS, fewshot_ridge
from scaling.evaluation.registry import Eval, Features, Shared, register


def fewshot_fields(train: Features, test: Features, shots: tuple[int, ...] = DEFAULT_FEWSHOT_SHOTS
                   ) -> dict[str, Any]:
    """Per-layer few-shot accuracy for each of ``shots`` no larger than the rarest class's count."""
    (features_train, labels_train), (features_test, labels_test) = train, test
    per_class = np.bincount(labels_train).min()
    usable = tuple(k for k in shots if k <= per_class)
    record: dict[str, Any] = {}
    if usable:
        for layer, layer_train in features_train.items():
            fewshot = fewshot_ridge(layer_train, labels_train, features_test[layer], labels_test,
                                    shots=usable)
            for k, result in fewshot["shots"].items():
                record[f"fewshot_{k}shot/{layer}"] = result["mean_accuracy"]
    return record


@register
class FewShot(Eval):
    name = "fewshot"

    def __call__(self, shared: Shared) -> dict[str, Any]:
        return fewshot_fields(shared.train, shared.test)
