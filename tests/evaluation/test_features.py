"""The probe examples of a run's evaluations: read once, served again in the same order; their features
computed a chunk of the batch at a time."""

import jax
import numpy as np
from flax import nnx
from helpers import load_experiment, random_batch

from scaling.evaluation import features
from scaling.evaluation.features import SplitImages
from scaling.models import chunks
from scaling.objectives.diffusion import Diffusion


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


def test_features_computed_in_chunks_are_those_of_the_whole_batch(monkeypatch):
    """Diffusion's features (noise drawn for the whole batch, every timestep) in four passes of four
    images each are the features of one pass over all sixteen."""
    config = load_experiment("diffusion")
    config.diffusion.condition = "none"
    objective = Diffusion(config)
    model = objective.init(nnx.Rngs(0))
    images = random_batch(config, 16)["image"]
    whole = objective.features(model, images, jax.random.key(1))
    monkeypatch.setattr(chunks, "ROWS", 4)
    chunked = objective.features(model, images, jax.random.key(1))
    passes = jax.make_jaxpr(lambda x: objective.features(model, x, jax.random.key(1)))(images)
    assert "scan" in str(passes)  # a loop over the chunks
    assert sorted(chunked) == sorted(whole)
    for name, value in whole.items():
        np.testing.assert_allclose(chunked[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
