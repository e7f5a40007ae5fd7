"""Tests for the procedural `scenes` data set: determinism, captions, labels and difficulty."""

import re

import numpy as np
import pytest

from scaling.data import scenes

SMALL_CONFIG = "32_small"


@pytest.fixture(scope="session")
def scenes_builder(data_dir):
    builder = scenes.Scenes(data_dir=data_dir, config=SMALL_CONFIG, file_format="array_record")
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def validation_records(scenes_builder):
    source = scenes_builder.as_data_source(split="validation")
    return [source[i] for i in range(200)]


def _names(builder, feature, value):
    return builder.info.features[feature].int2str(value)


def _sample_scenes(n):
    return [scenes.sample_scene(np.random.default_rng(seed)) for seed in range(n)]


def test_generate_example_is_deterministic():
    first = scenes.generate_example("train", 7, 32)
    again = scenes.generate_example("train", 7, 32)
    assert first.keys() == again.keys()
    np.testing.assert_array_equal(first["image"], again["image"])
    assert all(first[k] == again[k] for k in first if k != "image")


def test_examples_differ_across_index_and_split():
    base = scenes.generate_example("train", 0, 32)["image"]
    assert not np.array_equal(base, scenes.generate_example("train", 1, 32)["image"])
    assert not np.array_equal(base, scenes.generate_example("test", 0, 32)["image"])


def test_same_scene_at_every_image_size():
    small, large = scenes.generate_example("test", 3, 16), scenes.generate_example("test", 3, 32)
    assert small["image"].shape == (16, 16, 3) and large["image"].shape == (32, 32, 3)
    assert all(small[k] == large[k] for k in small if k != "image")


def test_built_records_are_the_generated_examples(scenes_builder):
    source = scenes_builder.as_data_source(split="validation")
    for index in (0, 1, 137):
        record, expected = source[index], scenes.generate_example("validation", index, 32)
        np.testing.assert_array_equal(record["image"], expected["image"])
        assert record["caption_descriptive"].decode() == expected["caption_descriptive"]
        assert _names(scenes_builder, "label", record["label"]) == expected["label"]


def test_split_sizes_follow_the_config(scenes_builder):
    splits = scenes_builder.info.splits
    assert {name: splits[name].num_examples for name in splits} == dict(scenes.SMALL_SPLIT_SIZES)


def test_labels_in_range(scenes_builder, validation_records):
    features = scenes_builder.info.features
    for key in ("label", "count", "color", "size", "position"):
        values = np.array([r[key] for r in validation_records])
        assert values.min() >= 0 and values.max() < features[key].num_classes
    counts = {r["count"] for r in validation_records}
    assert counts == {0, 1, 2, 3}
    assert {r["label"] for r in validation_records} == set(range(len(scenes.SHAPES)))


def test_short_caption_names_the_main_object(scenes_builder, validation_records):
    for record in validation_records:
        shape = _names(scenes_builder, "label", record["label"])
        color = _names(scenes_builder, "color", record["color"])
        assert record["caption_short"].decode() in (f"a {color} {shape}", f"an {color} {shape}")
        assert record["caption_none"] == b""


def test_medium_caption_lists_every_object_without_positions(scenes_builder, validation_records):
    for record in validation_records:
        caption = record["caption_medium"].decode()
        count = int(_names(scenes_builder, "count", record["count"]))
        assert len(re.findall(r"\ban? ", caption)) == count
        assert caption.startswith(record["caption_short"].decode())
        assert not re.search(r"\b(top|bottom|left|right|center|middle)\b", caption)


def test_main_object_is_strictly_largest():
    for scene in _sample_scenes(300):
        main_rank = scenes.SIZE_NAMES.index(scene.main.size)
        assert all(scenes.SIZE_NAMES.index(o.size) < main_rank for o in scene.objects[1:])
        assert 1 <= len(scene.objects) <= scenes.MAX_OBJECTS


def test_descriptive_caption_mentions_every_object_and_position():
    for seed, scene in enumerate(_sample_scenes(200)):
        caption = scenes.caption_descriptive(scene, np.random.default_rng(seed))
        for obj in scene.objects:
            pattern = rf"({obj.color} {obj.shape} [a-z]+ the {obj.region}\b" \
                      rf"|the {obj.region}, an? [a-z-]+ {obj.color} {obj.shape})"
            if obj.region == "center":
                pattern = rf"({obj.color} {obj.shape} [a-z]+ the (center|middle)" \
                          rf"|the (center|middle), an? [a-z-]+ {obj.color} {obj.shape})"
            assert re.search(pattern, caption), (caption, obj)


def test_descriptive_captions_vary_in_phrasing():
    scene = _sample_scenes(1)[0]
    variants = {scenes.caption_descriptive(scene, np.random.default_rng(s)) for s in range(30)}
    assert len(variants) >= 10
    openings = {
        scenes.generate_example("train", i, 16)["caption_descriptive"].split()[0]
        for i in range(60)
    }
    assert len(openings) >= 4


def test_raw_pixel_logistic_regression_stays_low(scenes_builder):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def pixels_and_labels(split, n):
        source = scenes_builder.as_data_source(split=split)
        records = [source[i] for i in range(n)]
        images = np.stack([r["image"] for r in records]).astype(np.float32)
        pooled = images.reshape(n, 16, 2, 16, 2, 3).mean(axis=(2, 4)).reshape(n, -1)
        return pooled, np.array([r["label"] for r in records])

    x_train, y_train = pixels_and_labels("train", 2000)
    x_test, y_test = pixels_and_labels("test", 1000)
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=0.001, max_iter=200)
    model.fit(scaler.transform(x_train), y_train)
    accuracy = model.score(scaler.transform(x_test), y_test)
    assert accuracy < 0.30  # measured 0.17 here (0.22 on the full set; chance is 0.125)


def test_default_caption_length_cuts_no_caption_of_any_split():
    """With data.max_caption_len unset, every caption of every level and split encodes whole, and the
    longest one fills the sequence exactly (no length beyond what the data needs)."""
    from scaling.config import base_config
    from scaling.data.captions import caption_length
    from scaling.data.tokenizer import ByteTokenizer

    texts = {level: [] for level in scenes.CAPTION_LEVELS}
    for split, count in scenes.DEFAULT_SPLIT_SIZES:
        for index in range(count):
            for key, text in scenes.scene_captions(split, index).items():
                texts[key.removeprefix("caption_")].append(text)
    data = base_config("clip").data
    tokenizer = ByteTokenizer()
    for level, level_texts in texts.items():
        data.caption_level = level
        tokens, mask = tokenizer.encode_batch(level_texts, caption_length(data))
        cut = [text for text, row in zip(level_texts, tokens, strict=True) if tokenizer.decode(row) != text]
        assert not cut, f"{len(cut)} {level} captions cut, e.g. {cut[0]!r}"
        assert mask.sum(axis=1).max() == caption_length(data), level
