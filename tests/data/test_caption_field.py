"""Caption fields: a data set's own text feature, a string or several captions per image of which training
draws one per example and epoch, the same on a rerun and after a resume, or a class label's name in the
zero-shot templates; a missing field is refused."""

import io
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from helpers import load_experiment
from PIL import Image
from test_pipeline import make_data_config

from scaling.config import validate
from scaling.data import pipeline
from scaling.data.captions import TEMPLATES
from scaling.data.local_builder import LocalBuilder
from scaling.data.tokenizer import ByteTokenizer
from scaling.errors import ConfigError

IMAGES, CAPTIONS_PER_IMAGE = 8, 4


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Captioned(LocalBuilder, skip_registration=True):
    """A coco_captions-like set: 8 images of 4 captions each ("image 3 caption 2"), nested as
    captions/text, and one plain caption per image."""

    name = "captioned"
    pkg_dir_path = epath.Path(__file__).parent  # its metadata folder (TFDS finds it for packages only)
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=IMAGES),
            "caption": tfds.features.Text(),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(IMAGES):
            yield i, {"image": png(np.full((8, 8, 3), i, np.uint8)), "label": i, "caption": f"image {i}",
                      "captions": {"text": [f"image {i} caption {c}" for c in range(CAPTIONS_PER_IMAGE)]}}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """The data section reading Captioned's captions/text, prepared in a fresh data directory (and read
    from its files, as any TFDS set prepared elsewhere)."""
    data_dir = tmp_path_factory.mktemp("captioned")
    Captioned(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return make_data_config(name="captioned", data_dir=str(data_dir), image_size=8, max_caption_len=24,
                            caption_field="captions/text")


def captions(batches) -> list[str]:
    return [ByteTokenizer().decode(tokens) for batch in batches for tokens in batch["caption_tokens"]]


def train_batches(data, count: int, seed: int = 0, state=None):
    iterator = pipeline.make_train_iterator(data, batch_size=IMAGES, seed=seed)
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator


def test_training_draws_a_caption_per_example_and_epoch_and_resumes_the_draws(captioned):
    run, iterator = train_batches(captioned, 3)  # an epoch per batch
    state = json.loads(json.dumps(iterator.get_state()))
    rest = [next(iterator) for _ in range(3)]
    texts = captions(run + rest)
    by_image = {}
    for label, text in zip(np.concatenate([b["label"] for b in run + rest]), texts, strict=True):
        assert text.startswith(f"image {label} caption ")
        by_image.setdefault(label, set()).add(text)
    assert np.mean([len(drawn) for drawn in by_image.values()]) > 2  # 6 epochs draw several of the 4
    resumed, _ = train_batches(captioned, 3, state=state)
    rerun, _ = train_batches(captioned, 3)
    assert captions(resumed) == captions(rest) and captions(rerun) == captions(run)
    other_seed, _ = train_batches(captioned, 3, seed=1)
    assert sorted(captions(other_seed)) != sorted(texts[:3 * IMAGES])


def test_evaluation_reads_the_first_caption_and_a_plain_field_its_string(captioned):
    [batch] = list(pipeline.make_eval_iterator(captioned, "train", batch_size=IMAGES))
    assert captions([batch]) == [f"image {label} caption 0" for label in batch["label"]]
    plain = make_data_config(**{**captioned.to_dict(), "caption_field": "caption"})
    [batch] = list(pipeline.make_eval_iterator(plain, "train", batch_size=IMAGES))
    assert captions([batch]) == [f"image {label}" for label in batch["label"]]


def test_a_class_label_field_captions_each_image_with_its_class_name_in_the_zero_shot_templates(captioned):
    labelled = make_data_config(**{**captioned.to_dict(), "caption_field": "label"})
    batches, _ = train_batches(labelled, 4)
    labels = np.concatenate([batch["label"] for batch in batches])
    texts = captions(batches)
    assert all(text in [template.format(label) for template in TEMPLATES]
               for label, text in zip(labels, texts, strict=True))
    assert len({text.replace(str(label), "{}") for label, text in zip(labels, texts, strict=True)}) > 2
    [batch] = list(pipeline.make_eval_iterator(labelled, "train", batch_size=IMAGES))
    assert captions([batch]) == [TEMPLATES[0].format(label) for label in batch["label"]]


def test_a_caption_field_the_data_set_lacks_names_the_features(captioned):
    missing = make_data_config(**{**captioned.to_dict(), "caption_field": "captions/txt"})
    with pytest.raises(ConfigError, match="'captions/txt' is not a feature of data set 'captioned', which "
                                          "has caption, captions, image, label"):
        pipeline.make_eval_iterator(missing, "train", batch_size=IMAGES)


@pytest.mark.parametrize("fields, message", [
    ({"caption_field": "caption"}, "'caption' needs data.max_caption_len"),
    ({"caption_field": "caption", "max_caption_len": 77, "caption_mix": "short:1"},
     "both choose the captions"),
])
def test_a_caption_field_without_a_length_or_beside_a_mix_is_refused(fields, message):
    config = load_experiment("clip")
    config.data.update(fields)
    with pytest.raises(ConfigError, match=message):
        validate(config, num_devices=1)
