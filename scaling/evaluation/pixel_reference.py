"""The raw-pixel reference of a probe: the linear probe on flattened pixels of the very examples a model's
features are probed on, so a curve of learned features has a floor to clear.

Computed once per probe data set, label, image size, splits and example counts, then cached as JSON in
``pixel_probes/`` of the data directory. Accuracies carry the same bootstrap interval as model probes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from scaling.data.pipeline import make_eval_iterator, resolve_data_dir
from scaling.evaluation.linear_probe import probe_layers
from scaling.workdir import read_json, write_json_atomic

CACHE_FOLDER = "pixel_probes"
PIXEL_FIELD = "pixel_probe_accuracy"


def accuracy_interval(accuracy: float, examples: int, *, level: float = 0.95, samples: int = 4000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy measured on ``examples`` test examples.

    Resampling the test set with replacement makes the number of correct predictions
    Binomial(examples, accuracy), so the bootstrap draws that count directly."""
    draws = np.random.default_rng(seed).binomial(examples, accuracy, samples) / examples
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def with_interval(field: str, accuracy: float, examples: int) -> dict[str, float]:
    """``{field: accuracy, field_low: ..., field_high: ...}`` (the 95% bootstrap interval)."""
    low, high = accuracy_interval(accuracy, examples)
    return {field: accuracy, f"{field}_low": low, f"{field}_high": high}


def _pixels(data_config, split: str, max_examples: int, per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch in make_eval_iterator(data_config, split, batch_size=500, max_examples=max_examples,
                                    per_class=per_class):
        images.append(batch["image"].reshape(len(batch["image"]), -1).astype(np.float32) / 255)
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)


def cache_key(data_config, train_split: str, test_split: str, train_examples: int, test_examples: int,
              seed: int, train_per_class: int = 0) -> str:
    train = f"{train_per_class}perclass" if train_per_class else train_examples
    parts = [data_config.name, data_config.image_size, data_config.label, train_split, train,
             test_split, test_examples, f"s{seed}"]
    if data_config.get("eval_transform"):  # the keys written before transforms existed stay valid
        parts.insert(2, data_config.eval_transform)
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", "-".join(map(str, parts)))


def pixel_reference(data_config, *, train_split: str, test_split: str, train_examples: int,
                    test_examples: int, seed: int = 0, train_per_class: int = 0) -> dict[str, Any]:
    """The raw-pixel probe's fields for eval records: ``pixel_probe_accuracy`` with ``_low``/``_high``;
    trained on ``train_per_class`` examples of each class when set, else on the first ``train_examples``."""
    key = cache_key(data_config, train_split, test_split, train_examples, test_examples, seed,
                    train_per_class)
    path = resolve_data_dir(data_config) / CACHE_FOLDER / f"{key}.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    x_train, y_train = _pixels(data_config, train_split, train_examples, train_per_class)
    x_test, y_test = _pixels(data_config, test_split, test_examples)
    probe = probe_layers({"pixels": x_train}, y_train, {"pixels": x_test}, y_test, seed=seed)
    fields = with_interval(PIXEL_FIELD, probe["best_test_accuracy"], len(y_test))
    write_json_atomic(path, fields)
    return fields
