"""Probing several labels of a data set on one set of features."""

import numpy as np
import pytest
from helpers import load_experiment

from scaling.data.pipeline import make_eval_iterator, split_labels
from scaling.errors import ConfigError
from scaling.evaluation.evals.extra_labels import extra_label_record


@pytest.fixture
def scenes(data_dir):
    data = load_experiment("clip").data
    data.name, data.data_dir = "scenes/32_small", data_dir
    return data


def test_split_labels_follow_the_eval_iterator_order(scenes):
    labels = split_labels(scenes, "test", ("label", "count"), max_examples=300)
    scenes.label = "count"
    batches = list(make_eval_iterator(scenes, "test", batch_size=128, max_examples=300))
    np.testing.assert_array_equal(labels["count"], np.concatenate([b["label"] for b in batches]))
    assert labels["label"].shape == (300,) and not np.array_equal(labels["label"], labels["count"])


def test_each_extra_label_is_probed_on_the_same_features(scenes):
    """Features that encode the object count and nothing else: the count probe is perfect, the colour
    probe is not, and each carries its own raw-pixel floor."""
    train_count = split_labels(scenes, "train", ("count",), max_examples=400)["count"]
    test_count = split_labels(scenes, "test", ("count",), max_examples=200)["count"]
    rng = np.random.default_rng(0)
    encode = lambda y: np.eye(4, dtype=np.float32)[y] + 0.01 * rng.normal(size=(len(y), 4)).astype(np.float32)
    record = extra_label_record(scenes, {"layer_01": encode(train_count)}, {"layer_01": encode(test_count)},
                                ("count", "color"), train_split="train", test_split="test")
    assert record["count_probe_accuracy"] == 1.0
    assert record["color_probe_accuracy"] < 0.6
    for label in ("count", "color"):
        assert record[f"{label}_probe_accuracy_low"] <= record[f"{label}_probe_accuracy"]
        assert record[f"{label}_probe_accuracy/layer_01"] == record[f"{label}_probe_accuracy"]
        assert 0 < record[f"{label}_pixel_probe_accuracy"] < 1
    assert record["count_pixel_probe_accuracy"] != record["color_pixel_probe_accuracy"]


def test_an_unknown_extra_label_names_the_ones_there_are(scenes):
    with pytest.raises(ConfigError, match="label 'colour' is not a feature.*color, count"):
        split_labels(scenes, "test", ("colour",), max_examples=10)
