"""Image transforms by config: the shapes each op gives, draws that follow the seed, a training stream
that resumes with exactly the same pixels, and one clear error for a transform that cannot work."""

import json
import re

import numpy as np
import pytest
from helpers import load_experiment
from test_pipeline import make_data_config

from scaling.config import validate
from scaling.data import pipeline
from scaling.data.transforms import apply_ops, parse_transform
from scaling.errors import ConfigError

PHOTO = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)  # landscape, not square


@pytest.mark.parametrize("text, shape", [
    ("square(16)", (16, 16, 3)),
    ("resize(20)", (20, 30, 3)),
    ("resize(20)|center_crop(16)", (16, 16, 3)),
    ("inception_crop(16)|flip", (16, 16, 3)),
    ("inception_crop(24, 0.5)", (24, 24, 3)),
])
def test_each_transform_gives_its_shape(text, shape):
    assert apply_ops(parse_transform(text, "data.train_transform"), PHOTO, (0, 0, 7)).shape == shape


def test_grey_images_become_rgb_and_a_square_of_the_size_is_left_as_it_is():
    ops = parse_transform("square(40)", "data.eval_transform")
    assert apply_ops(ops, PHOTO[..., 0]).shape == (40, 40, 3)
    np.testing.assert_array_equal(apply_ops(ops, PHOTO[:, 10:50]), PHOTO[:, 10:50])


def test_random_ops_follow_their_key():
    ops = parse_transform("inception_crop(16)|flip", "data.train_transform")
    crops = [apply_ops(ops, PHOTO, (seed, 0, position)) for seed in (0, 1) for position in range(4)]
    np.testing.assert_array_equal(crops[0], apply_ops(ops, PHOTO, (0, 0, 0)))
    assert len({crop.tobytes() for crop in crops}) == len(crops)


def test_training_transform_resumes_with_the_same_pixels(data_dir):
    data = make_data_config(data_dir=data_dir, train_transform="inception_crop(32, 0.3)|flip")
    iterator = pipeline.make_train_iterator(data, batch_size=16, seed=0)
    first = [next(iterator) for _ in range(2)]
    state = json.loads(json.dumps(iterator.get_state()))
    rest = [next(iterator)["image"] for _ in range(2)]
    resumed = pipeline.make_train_iterator(data, batch_size=16, seed=0)
    resumed.set_state(state)
    np.testing.assert_array_equal(np.stack(rest), np.stack([next(resumed)["image"] for _ in range(2)]))
    plain = pipeline.make_train_iterator(make_data_config(data_dir=data_dir), batch_size=16, seed=0)
    assert np.mean(next(plain)["image"] != first[0]["image"]) > 0.5  # the same examples, cropped


@pytest.mark.parametrize("fields, message", [
    ({"train_transform": "inception_crop(32)|flop"}, "data.train_transform: unknown op 'flop'"),
    ({"train_transform": "resize(x)|center_crop(32)"}, "'resize(x)' is not resize(N): arguments are numbers"),
    ({"train_transform": "inception_crop(32, 2)"}, "a fraction is in (0, 1]"),
    ({"train_transform": "center_crop(32"}, "lacks its closing ')'"),
    ({"train_transform": "resize(48)"}, "ends with no square, but data.image_size is 32"),
    ({"eval_transform": "square(64)"}, "ends with 64x64 images, but data.image_size is 32"),
    ({"eval_transform": "square(32)|flip"}, "data.eval_transform: flip draw at random"),
])
def test_a_transform_that_cannot_work_is_refused_before_training(fields, message):
    config = load_experiment("clip")
    config.data.update(fields)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config, num_devices=1)
