"""Tests for the grain pipelines and data-set builders: batch layout, shuffling, sharding, resume,
eval coverage, and the CIFAR-10 JPEG builder (on a tiny synthetic copy, and on the shared copy
when present)."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from scaling.data import cifar10_jpeg, pipeline
from scaling.data.tokenizer import ByteTokenizer
from scaling.errors import DataError

BATCH_KEYS = {"image", "label", "caption_tokens", "caption_mask"}


def make_data_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({
        "name": "scenes/32_small",
        "data_dir": "",
        "image_size": 32,
        "caption_level": "descriptive",
        "label": "label",
        "max_caption_len": 64,
        "tokenizer": "byte",
        "worker_count": 0,
        "train_split": "train",
    })
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def data_config(data_dir):
    config = make_data_config(data_dir=data_dir)
    pipeline.ensure_built(config)
    return config


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def image_hashes(batches):
    return [hashlib.sha1(image.tobytes()).hexdigest() for b in batches for image in b["image"]]


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# ----------------------------------------------------------------------------- building


def test_ensure_built_is_idempotent(data_config):
    builder = pipeline.ensure_built(data_config)
    files = sorted(Path(builder.data_dir).iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    again = pipeline.ensure_built(data_config)
    assert again.is_prepared()
    assert [f.stat().st_mtime_ns for f in sorted(Path(again.data_dir).iterdir())] == stamps


def test_scenes_config_follows_image_size(data_dir):
    builder = pipeline.make_builder(make_data_config(name="scenes", image_size=16,
                                                     data_dir=data_dir))
    assert builder.builder_config.name == "16"


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(pipeline.DATA_DIR_ENV, str(tmp_path / "env"))
    assert pipeline.resolve_data_dir(make_data_config()) == tmp_path / "env"
    explicit = make_data_config(data_dir=str(tmp_path / "explicit"))
    assert pipeline.resolve_data_dir(explicit) == tmp_path / "explicit"
    monkeypatch.delenv(pipeline.DATA_DIR_ENV)
    assert str(pipeline.resolve_data_dir(make_data_config())).endswith(
        "scaling/tensorflow_datasets")


def test_unprepared_tfds_name_gives_the_fix(tmp_path):
    with pytest.raises(DataError, match="tfds build mnist"):
        pipeline.ensure_built(make_data_config(name="mnist", data_dir=str(tmp_path)))


def test_unprepared_manual_download_names_the_files_and_where_they_go(tmp_path):
    with pytest.raises(DataError) as error:
        pipeline.ensure_built(make_data_config(name="imagenet2012", data_dir=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message and "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert f"put those files in {tmp_path}/downloads/manual, then run `tfds build imagenet2012" in message
    assert pipeline.labelled_split("imagenet2012", "test") == "validation"  # its test labels are all -1


def test_num_examples(data_config):
    assert pipeline.num_examples(data_config, "validation") == 500
    assert pipeline.num_examples(data_config, "validation[:40]") == 40


# ----------------------------------------------------------------------------- batches


def test_train_batch_layout(data_config):
    batch = next(pipeline.make_train_iterator(data_config, batch_size=8, seed=0))
    assert set(batch) == BATCH_KEYS
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    for key in ("caption_tokens", "caption_mask"):
        assert batch[key].shape == (8, 64) and batch[key].dtype == np.int32


def test_captions_match_labels(data_config):
    config = make_data_config(data_dir=data_config.data_dir, caption_level="short")
    builder = pipeline.ensure_built(config)
    tokenizer = ByteTokenizer()
    batch = next(pipeline.make_eval_iterator(config, "validation", batch_size=16))
    for tokens, label in zip(batch["caption_tokens"], batch["label"], strict=True):
        shape = builder.info.features["label"].int2str(label)
        assert tokenizer.decode(tokens).endswith(f" {shape}")


def test_caption_level_none_gives_bos_eos_only(data_config):
    config = make_data_config(data_dir=data_config.data_dir, caption_level="none")
    batch = next(pipeline.make_eval_iterator(config, "validation", batch_size=4))
    np.testing.assert_array_equal(batch["caption_mask"].sum(axis=1), 2)
    np.testing.assert_array_equal(batch["caption_tokens"][:, :2], [[1, 2]] * 4)


def test_other_label_feature_and_resizing(data_config):
    config = make_data_config(data_dir=data_config.data_dir, label="count", image_size=24)
    batch = next(pipeline.make_eval_iterator(config, "validation", batch_size=4))
    assert batch["image"].shape == (4, 24, 24, 3)
    assert batch["label"].max() < 4


def test_bad_settings_raise(data_config):
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_train_iterator(data_config, batch_size=10, seed=0, process_count=4)
    with pytest.raises(ValueError, match="colour"):
        pipeline.make_train_iterator(
            make_data_config(data_dir=data_config.data_dir, label="colour"), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="caption_level"):
        pipeline.make_train_iterator(
            make_data_config(data_dir=data_config.data_dir, caption_level="long"),
            batch_size=4, seed=0)


# ----------------------------------------------------------------------------- train order


def test_shuffle_is_deterministic_by_seed(data_config):
    first = take(pipeline.make_train_iterator(data_config, batch_size=8, seed=3), 3)
    again = take(pipeline.make_train_iterator(data_config, batch_size=8, seed=3), 3)
    other = take(pipeline.make_train_iterator(data_config, batch_size=8, seed=4), 3)
    assert_batches_equal(first, again)
    assert image_hashes(first) != image_hashes(other)


def test_each_epoch_is_a_new_permutation(data_config):
    config = make_data_config(data_dir=data_config.data_dir, train_split="validation[:40]")
    hashes = image_hashes(take(pipeline.make_train_iterator(config, batch_size=8, seed=0), 15))
    epochs = [hashes[i * 40:(i + 1) * 40] for i in range(3)]
    assert all(len(set(epoch)) == 40 and set(epoch) == set(epochs[0]) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


def test_process_shards_are_disjoint(data_config):
    config = make_data_config(data_dir=data_config.data_dir, train_split="validation[:64]")
    shards = [
        take(pipeline.make_train_iterator(config, batch_size=8, seed=0, process_index=p,
                                          process_count=2), 4)
        for p in range(2)
    ]
    assert all(b["image"].shape[0] == 4 for shard in shards for b in shard)
    first, second = (set(image_hashes(shard)) for shard in shards)
    assert len(first) == len(second) == 16
    assert not first & second


def test_state_restore_resumes_exactly(data_config):
    iterator = pipeline.make_train_iterator(data_config, batch_size=8, seed=1)
    take(iterator, 5)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 3)
    resumed = pipeline.make_train_iterator(data_config, batch_size=8, seed=1)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), expected)


def test_worker_processes_match_in_process_and_resume(data_config):
    config = make_data_config(data_dir=data_config.data_dir, worker_count=2)
    reference = take(pipeline.make_train_iterator(data_config, batch_size=8, seed=2), 6)
    iterator = pipeline.make_train_iterator(config, batch_size=8, seed=2)
    head = take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    iterator.close()
    resumed = pipeline.make_train_iterator(config, batch_size=8, seed=2)
    resumed.set_state(state)
    tail = take(resumed, 3)
    resumed.close()
    assert_batches_equal(head + tail, reference)


# ----------------------------------------------------------------------------- eval


def test_eval_covers_each_example_once_in_order(data_config):
    builder = pipeline.ensure_built(data_config)
    source = builder.as_data_source(split="validation")
    batches = list(pipeline.make_eval_iterator(data_config, "validation", batch_size=64))
    assert [len(b["label"]) for b in batches] == [64] * 7 + [52]
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images, np.stack([source[i]["image"] for i in range(500)]))


def test_a_per_class_subset_is_exact_deterministic_and_decodes_only_what_it_keeps(data_config, monkeypatch):
    decode = pipeline.tfds.features.Image.decode_example_np
    decoded = []
    monkeypatch.setattr(pipeline.tfds.features.Image, "decode_example_np",
                        lambda feature, *args, **kw: decoded.append(1) or decode(feature, *args, **kw))
    passes = [list(pipeline.make_eval_iterator(data_config, "train", batch_size=64, per_class=7))
              for _ in range(2)]
    classes = pipeline.ensure_built(data_config).info.features["label"].num_classes
    assert len(decoded) == 2 * 7 * classes  # of the split's 2000 images, only the chosen ones
    assert_batches_equal(*passes)
    labels = np.concatenate([batch["label"] for batch in passes[0]])
    np.testing.assert_array_equal(np.bincount(labels, minlength=classes), [7] * classes)
    indices = pipeline.per_class_indices(data_config, "train", 7)
    source = pipeline.ensure_built(data_config).as_data_source(split="train")
    np.testing.assert_array_equal(np.concatenate([batch["image"] for batch in passes[0]]),
                                  np.stack([source[int(i)]["image"] for i in indices]))
    assert not set(indices) <= set(range(7 * classes + 50))  # drawn across the split, not its first rows
    count = pipeline.split_labels(data_config, "train", ("label", "count"), per_class=7)
    np.testing.assert_array_equal(count["label"], labels)
    with pytest.raises(DataError, match=r"classes of 'label' have fewer than 400 examples in split 'train' "
                                        r"of 'scenes/32_small' \(.*\); ask for at most \d+ per class"):
        pipeline.per_class_indices(data_config, "train", 400)


def test_eval_shards_partition_the_split(data_config):
    shards = [
        list(pipeline.make_eval_iterator(data_config, "validation", batch_size=32,
                                         process_index=p, process_count=2, max_examples=101))
        for p in range(2)
    ]
    hashes = [image_hashes(shard) for shard in shards]
    assert [len(h) for h in hashes] == [51, 50]
    assert not set(hashes[0]) & set(hashes[1])
    everything = list(pipeline.make_eval_iterator(data_config, "validation", batch_size=32,
                                                  max_examples=101))
    assert set(hashes[0]) | set(hashes[1]) == set(image_hashes(everything))


# ----------------------------------------------------------------------------- CIFAR-10 JPEG


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 255 - value, value // 2)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def fake_cifar_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cifar10-jpeg")
    for split, per_class in (("train", 3), ("test", 2)):
        with tarfile.open(directory / cifar10_jpeg.tarball_name(split), "w:gz") as archive:
            for label, name in enumerate(cifar10_jpeg.CLASS_NAMES):
                for i in range(per_class):
                    _add_member(archive, f"{split}/{name}/{i:04d}.jpg", _jpeg(label * 20 + i))
    return directory


def test_cifar_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(cifar10_jpeg.ENV_VAR, str(tmp_path))
    assert cifar10_jpeg.default_cifar10_jpeg_dir() == tmp_path


def test_cifar_missing_tarballs_name_dir_and_env(monkeypatch, tmp_path):
    with pytest.raises(DataError, match=cifar10_jpeg.ENV_VAR) as error:
        cifar10_jpeg.find_tarballs(tmp_path)
    assert str(tmp_path) in str(error.value)
    monkeypatch.setenv(cifar10_jpeg.ENV_VAR, str(tmp_path / "absent"))
    config = make_data_config(name="cifar10_jpeg", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="absent"):
        pipeline.ensure_built(config)


def test_cifar_builder_keeps_jpeg_bytes_and_class_order(monkeypatch, tmp_path, fake_cifar_dir):
    monkeypatch.setenv(cifar10_jpeg.ENV_VAR, str(fake_cifar_dir))
    config = make_data_config(name="cifar10_jpeg", data_dir=str(tmp_path), caption_level="short")
    builder = pipeline.ensure_built(config)
    assert builder.info.features["label"].names == list(cifar10_jpeg.CLASS_NAMES)
    assert pipeline.num_examples(config, "train") == 30
    source = builder.as_data_source(split="test")
    for i in range(len(source)):
        record = source[i]
        _, name, number = record["id"].decode().split("/")
        assert cifar10_jpeg.CLASS_NAMES[record["label"]] == name
        value = record["label"] * 20 + int(number[:4])
        expected = np.asarray(Image.open(io.BytesIO(_jpeg(value))).convert("RGB"))
        np.testing.assert_array_equal(record["image"], expected)
        caption = record["caption_short"].decode()
        assert caption in {t.format(name) for t in cifar10_jpeg.CAPTION_TEMPLATES}
        assert caption == cifar10_jpeg.class_caption(record["id"].decode(), name)
    config.max_caption_len = cifar10_jpeg.CAPTION_TOKENS
    batches = list(pipeline.make_eval_iterator(config, "test", batch_size=8))
    assert sorted(np.concatenate([b["label"] for b in batches])) == sorted(list(range(10)) * 2)
    first = batches[0]
    for tokens, mask, label in zip(first["caption_tokens"], first["caption_mask"], first["label"],
                                   strict=True):
        text = ByteTokenizer().decode(tokens)
        assert cifar10_jpeg.CLASS_NAMES[label] in text and mask.sum() == len(text) + 2


def test_shared_cifar_copy(tmp_path):
    directory = cifar10_jpeg.default_cifar10_jpeg_dir()
    if directory is None or not (directory / cifar10_jpeg.tarball_name("test")).is_file():
        pytest.skip("no CIFAR-10 JPEG copy (set SCALING_CIFAR10_JPEG_DIR)")
    config = make_data_config(name="cifar10_jpeg", data_dir=str(tmp_path))
    assert pipeline.num_examples(config, "train") == 50_000
    assert pipeline.num_examples(config, "test") == 10_000
    batches = pipeline.make_eval_iterator(config, "test", batch_size=500, max_examples=1000)
    labels = np.concatenate([b["label"] for b in batches])
    assert len(labels) == 1000
    assert np.bincount(labels, minlength=10).min() > 50  # written shuffled, so classes mix


def test_digits_are_real_scikit_learn_digits(tmp_path):
    from sklearn.datasets import load_digits

    config = make_data_config(name="digits", data_dir=str(tmp_path))
    assert pipeline.num_examples(config, "train") + pipeline.num_examples(config, "test") == 1797
    batch = next(pipeline.make_eval_iterator(config, "test", batch_size=359))
    assert batch["image"].shape == (359, 32, 32, 3) and batch["image"].dtype == np.uint8
    reference = load_digits()
    first = batch["image"][0, ::4, ::4, 0].astype(np.float64) * 16 / 255
    matches = np.abs(reference.images - first).max(axis=(1, 2)) < 0.5
    assert reference.target[matches][0] == batch["label"][0]


@pytest.mark.parametrize("level, length", [("short", 20), ("descriptive", 250)])
def test_caption_width_follows_the_caption_level(data_config, level, length):
    config = make_data_config(data_dir=data_config.data_dir, caption_level=level, max_caption_len=0)
    batch = next(pipeline.make_eval_iterator(config, "validation", batch_size=64))
    assert batch["caption_tokens"].shape == (64, length)
    assert (batch["caption_tokens"][np.arange(64), batch["caption_mask"].sum(1) - 1] == 2).all()  # EOS kept
