"""The probe examples of a run's evaluations: read once, served again in the same order."""

import numpy as np

from scaling.evaluation import features
from scaling.evaluation.features import SplitImages


def test_a_split_is_read_once_for_every_evaluation_unless_it_exceeds_the_memory_budget(tiny_config,
                                                                                       monkeypatch):
    data = tiny_config().data
    read = features.make_eval_iterator
    reads = []
    monkeypatch.setattr(features, "make_eval_iterator",
                        lambda config, split, **kw: reads.append(split) or read(config, split, **kw))
    images = SplitImages(data, batch_size=128)
    first, again = (list(images.batches("test", 300)) for _ in range(2))
    assert reads == ["test"]
    reference = list(read(data, "test", batch_size=128, max_examples=300))
    for batches in (first, again):
        for batch, expected in zip(batches, reference, strict=True):
            np.testing.assert_array_equal(batch["image"], expected["image"])
            np.testing.assert_array_equal(batch["label"], expected["label"])

    small = SplitImages(data, batch_size=128, max_bytes=10_000)  # less than one batch of images
    for _ in range(2):
        assert sum(len(batch["label"]) for batch in small.batches("test", 300)) == 300
    assert reads == ["test"] * 3
