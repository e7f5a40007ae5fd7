"""The `digits` TFDS builder: scikit-learn's bundled 8x8 handwritten digits (real, offline).

1,797 grey images of 16 levels, upscaled (nearest neighbour) to 32x32 RGB PNGs so every model size reads
them; a seeded 80/20 split gives train and test. Needs scikit-learn, which ships the data.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from scaling.data.local_builder import LocalBuilder
from scaling.errors import DataError

CLASS_NAMES = tuple(str(d) for d in range(10))
IMAGE_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8] scaled to 0..255, labels [N])."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise DataError(
            "the digits data set ships with scikit-learn; install it with `pip install scikit-learn`"
        ) from error
    bunch = sklearn_digits()
    return (bunch.images * (255 / 16)).round().astype(np.uint8), bunch.target.astype(np.int64)


def to_png(image_88: np.ndarray) -> bytes:
    scale = IMAGE_SIZE // image_88.shape[0]
    big = np.repeat(np.repeat(image_88, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([big] * 3, axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


def split_indices(count: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    test_count = int(round(TEST_FRACTION * count))
    return {"train": np.sort(order[test_count:]), "test": np.sort(order[:test_count])}


class Digits(LocalBuilder):
    """scikit-learn's 8x8 digits as 32x32 RGB images with a 10-class label."""

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        images, labels = load_digits()
        return {
            split: self._generate_examples(images[indices], labels[indices], indices)
            for split, indices in split_indices(len(labels)).items()
        }

    def _generate_examples(self, images, labels, indices):
        for image, label, index in zip(images, labels, indices, strict=True):
            yield int(index), {"image": to_png(image), "label": int(label)}
