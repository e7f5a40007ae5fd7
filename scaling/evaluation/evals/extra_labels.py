"""The ``extra_labels`` evaluation: each of ``eval.extra_labels`` probed on the same features as the
probe label, with its own raw-pixel floor, into fields prefixed with its name (``count_probe_accuracy``,
``count_pixel_probe_accuracy``, ...)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.data.pipeline import split_labels
from scaling.errors import ConfigError
from scaling.evaluation.evals.linear_probe import linear_probe_fields
from scaling.evaluation.pixel_reference import pixel_reference
from scaling.evaluation.registry import Eval, Setup, Shared, register


def extra_label_record(
    data_config,
    train_features: dict[str, np.ndarray],
    test_features: dict[str, np.ndarray],
    labels: tuple[str, ...],
    *,
    train_split: str,
    test_split: str,
    seed: int = 0,
) -> dict[str, Any]:
    """For each label: its linear probe on the given features and its raw-pixel floor, fields prefixed
    ``{label}_``. The features are the first examples of each split, in order."""
    train_count, test_count = (len(next(iter(f.values()))) for f in (train_features, test_features))
    train_labels = split_labels(data_config, train_split, labels, train_count)
    test_labels = split_labels(data_config, test_split, labels, test_count)
    record: dict[str, Any] = {}
    for label in labels:
        fields = linear_probe_fields((train_features, train_labels[label]),
                                     (test_features, test_labels[label]), seed=seed)
        labelled = data_config.copy_and_resolve_references()
        labelled.label = label
        fields.update(pixel_reference(labelled, train_split=train_split, test_split=test_split,
                                      train_examples=train_count, test_examples=test_count, seed=seed))
        record.update({f"{label}_{name}": value for name, value in fields.items()})
    return record


@register
class ExtraLabels(Eval):
    name = "extra_labels"

    @classmethod
    def available(cls, objective, config) -> bool:
        return bool(config.eval.get("extra_labels", ()))

    def __init__(self, setup: Setup):
        super().__init__(setup)
        e = setup.config.eval
        self.labels = tuple(e.extra_labels)
        if e.get("probe_train_per_class", 0):
            raise ConfigError(f"eval.extra_labels {list(self.labels)} are probed on the first "
                              "eval.probe_train_examples, not on a per-class subset; set "
                              "eval.probe_train_per_class=0 (or leave out --train-per-class)")
        split_labels(setup.data, e.test_split, self.labels, max_examples=1)

    def __call__(self, shared: Shared) -> dict[str, Any]:
        e = self.setup.config.eval
        return extra_label_record(self.setup.data, shared.train[0], shared.test[0], self.labels,
                                  train_split=e.train_split, test_split=e.test_split,
                                  seed=self.setup.config.seed)
