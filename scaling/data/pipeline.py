"""Grain input pipelines over TFDS data sources, driven by the config's `data` section.

Owns finding and building data sets (`ensure_built`), the per-example transform into the fixed batch layout,
and the train and eval iterators. Every batch is a dict of numpy arrays in the layout of scaling.data.batch,
exactly these keys: `image` uint8 [b, H, W, 3], `label` int32 [b], `caption_tokens` int32 [b, T] and
`caption_mask` int32 [b, T], with b = batch_size // process_count and T = `caption_length(data)`:
`data.max_caption_len` when set, else the longest caption of `data.caption_level` or of the levels of
`data.caption_mix` (so no caption is cut and a short caption is not padded to a descriptive one's length).
Training captions follow `data.caption_mix` (scaling.data.caption_mix), evaluation reads one level.
`data.caption_field` names another text feature instead ("caption", or "captions/text" nested): a string,
or a sequence of strings of which training draws one per example and epoch, keyed by (seed, process index,
position in the training stream) so a resumed iterator draws the same; evaluation reads the first. A class
label feature ("label") names language as the label: its class name in one of the data set's prompt
templates ("a photo of a triangle"), the same templates zero-shot scores with.
Images go through `data.train_transform` / `data.eval_transform` (scaling.data.transforms), by default
`square(data.image_size)`, with the same key for the random ops.

Each process reads a disjoint strided shard of the split (examples process_index, process_index +
process_count, ...), so shard sizes differ by at most one example between processes. An evaluation pass
reads the first ``max_examples`` of a split, or ``per_class`` examples of each class of ``data.label``
(``per_class_indices``: labels read with the images left undecoded, then only the chosen images decoded).

Data sets, by `data.name`: "scenes" (built from code; the builder config follows
`data.image_size`, or name one explicitly as "scenes/32_small"), "digits" (scikit-learn's 8x8
digits), "cifar10_jpeg" (the local JPEG
copy) or any TFDS name already prepared in array_record format under the data directory (by `tfds build`, or
by `scaling data import` from webdataset shards, scaling.data.importer).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from scaling.data import cifar10_jpeg, digits, scenes
from scaling.data.caption_mix import MixedCaptions, at_level
from scaling.data.captions import (
    CAPTION_LEVELS,
    caption_length,
    class_prompts,
    prompt_templates,
    training_mix,
)
from scaling.data.tokenizer import Tokenizer, get_tokenizer
from scaling.data.transforms import Op, apply_ops, transform_ops
from scaling.errors import ConfigError, DataError

DATA_DIR_ENV = "SCALING_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/scaling/tensorflow_datasets"
FILE_FORMAT = "array_record"
BUILT_FROM_CODE = ("scenes", "digits", "cifar10_jpeg")
READ_THREADS = 4
PREFETCH_BATCHES = 8
CAPTION_DRAW = 1  # appended to a stream position's key for the caption draw, apart from the level draw
SUBSET_SEED = 0  # the order per-class subsets are drawn in: the same examples for every run and probe
LABEL_CHUNK = 4096  # records whose labels are read at once while drawing a per-class subset
UNLABELLED_SPLITS = {"imagenet2012": {"test": "validation"}}  # a split without labels -> the one probed


# ----------------------------------------------------------------------------- data sets


def data_dir_path(given: str = "") -> Path:
    """``given`` if set, else `$SCALING_DATA_DIR`, else the default cache directory."""
    return Path(given or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def resolve_data_dir(data_config) -> Path:
    """`data.data_dir` if set, else `$SCALING_DATA_DIR`, else the default cache directory."""
    return data_dir_path(data_config.data_dir)


def _dataset_and_config(name: str) -> tuple[str, str | None]:
    dataset, _, config = name.partition("/")
    return dataset, config or None


def _scenes_builder(config_name: str | None, image_size: int, data_dir: Path):
    name = config_name or str(image_size)
    if name in scenes.Scenes.builder_configs:
        config = name
    elif name.isdigit():
        config = scenes.scenes_config(int(name))
    else:
        known = ", ".join(sorted(scenes.Scenes.builder_configs))
        raise ConfigError(f"data.name: unknown scenes config {name!r}; known: {known}, or any image size")
    return scenes.Scenes(data_dir=data_dir, config=config, file_format=FILE_FORMAT)


def make_builder(data_config):
    """The TFDS builder `data.name` refers to, not necessarily prepared."""
    data_dir = resolve_data_dir(data_config)
    dataset, config_name = _dataset_and_config(data_config.name)
    if dataset == "scenes":
        return _scenes_builder(config_name, data_config.image_size, data_dir)
    if dataset == "cifar10_jpeg":
        return cifar10_jpeg.Cifar10Jpeg(data_dir=data_dir, file_format=FILE_FORMAT)
    if dataset == "digits":
        return digits.Digits(data_dir=data_dir, file_format=FILE_FORMAT)
    try:
        return tfds.builder(data_config.name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"no data set {data_config.name!r}: {_what_exists(data_dir)}. "
                        f"{_how_to_prepare(data_dir)}") from None


def label_classes(data_config) -> int:
    """Classes of the feature ``data.label``, from the data set's metadata (no example is read)."""
    if not data_config.label:
        raise ConfigError(f"data.label is empty, but this run classifies; name a class label of "
                          f"{data_config.name!r}")
    return make_builder(data_config).info.features[data_config.label].num_classes


def _what_exists(data_dir: Path) -> str:
    folders = sorted(data_dir.iterdir()) if data_dir.is_dir() else []
    prepared = [folder.name for folder in folders if folder.is_dir() and folder.name != "downloads"]
    return (f"the data sets are {', '.join(BUILT_FROM_CODE)} (built here from code or local files) and "
            f"those prepared in {data_dir} ({', '.join(prepared) or 'none'})")


def _how_to_prepare(data_dir: Path, name: str = "NAME") -> str:
    return (f"Prepare a TFDS data set once (needs network) with `tfds build {name} --data_dir={data_dir} "
            f"--file_format={FILE_FORMAT}`, import webdataset shards with `scaling data import SHARDS "
            f"--name {name} --data-dir {data_dir}`, or point data.data_dir (or ${DATA_DIR_ENV}) at a TFDS "
            "folder that holds it")


def _how_to_prepare_tfds(builder, data_dir: Path, name: str) -> str:
    """How to prepare TFDS data set ``name``: what it needs downloaded by hand, where to put it, which
    command builds it."""
    instructions = " ".join((getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", "") or "").split())
    if not instructions:
        return _how_to_prepare(data_dir, name)
    manual_dir = data_dir / "downloads" / "manual"
    return (f"It needs a manual download ({instructions.rstrip('.')}); put those files in {manual_dir}, then "
            f"run `tfds build {name} --data_dir={data_dir} --manual_dir={manual_dir} "
            f"--file_format={FILE_FORMAT}`")


def labelled_split(name: str, split: str) -> str:
    """The split probes score on for ``split`` of data set ``name``: ``split`` itself, or the labelled split
    that stands for it where the data set's own has no labels (imagenet2012's test -> validation)."""
    dataset, _ = _dataset_and_config(name)
    return UNLABELLED_SPLITS.get(dataset, {}).get(split, split)


def _check_readable(builder, name: str) -> None:
    formats = {builder.info.file_format, *builder.info.alternative_file_formats}
    if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
        raise DataError(
            f"{name!r} in {builder.data_dir} is stored as {builder.info.file_format}, but grain "
            f"reads array_record only. Rebuild it with `tfds build {name} --file_format="
            f"{FILE_FORMAT}` or convert it with `tfds convert_format`."
        )


def _prepare_cifar10_jpeg(builder) -> None:
    directory = cifar10_jpeg.default_cifar10_jpeg_dir()
    cifar10_jpeg.find_tarballs(directory)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(directory))
    builder.download_and_prepare(download_config=config)


def ensure_built(data_config):
    """The prepared builder for `data.name`, building it first if needed (once; idempotent).

    Builds `scenes` and `digits` from code and `cifar10_jpeg` from the local tarballs. Other TFDS names must
    already be prepared in the data directory; otherwise DataError says how.
    """
    builder = make_builder(data_config)
    if builder.is_prepared():
        _check_readable(builder, data_config.name)
        return builder
    dataset, _ = _dataset_and_config(data_config.name)
    if dataset in ("scenes", "digits"):
        builder.download_and_prepare()
    elif dataset == "cifar10_jpeg":
        _prepare_cifar10_jpeg(builder)
    else:
        raise DataError(f"TFDS data set {data_config.name!r} is not prepared in {builder.data_dir}. "
                        f"{_how_to_prepare_tfds(builder, resolve_data_dir(data_config), data_config.name)}.")
    return builder



def num_examples(data_config, split: str) -> int:
    """Examples in `split` (TFDS split syntax such as "train[:1000]" works); public, for notebooks and
    for sizing probes."""
    return ensure_built(data_config).info.splits[split].num_examples


# ----------------------------------------------------------------------------- examples


def _feature_at(features, path: tuple[str, ...]):
    """The feature at ``path`` ("captions", "text") of a features dict, None where there is none."""
    feature = features
    for part in path:
        try:
            feature = feature[part]
        except (KeyError, TypeError, AttributeError):
            return None
    return feature


def caption_path(data_config, builder) -> tuple[str, ...] | None:
    """Where each record keeps its caption: ``data.caption_field`` split at "/" when set (ConfigError
    when the data set has no such feature), else ``caption_<data.caption_level>``, None where the data
    set has no captions."""
    field = data_config.get("caption_field", "")
    if field:
        path = tuple(field.split("/"))
        if _feature_at(builder.info.features, path) is None:
            available = ", ".join(sorted(builder.info.features))
            raise ConfigError(f"data.caption_field: {field!r} is not a feature of data set "
                              f"{data_config.name!r}, which has {available}; name the text feature "
                              "(a/b for a nested one)")
        return path
    level = data_config.caption_level
    if level not in CAPTION_LEVELS:
        raise ValueError(f"caption_level {level!r} not in {CAPTION_LEVELS}")
    key = f"caption_{level}"
    return (key,) if key in builder.info.features else None


def class_captions(data_config, builder, path: tuple[str, ...] | None) -> tuple[tuple[str, ...], ...]:
    """Per class, the captions a class-label caption field draws from (its name in each of the data set's
    prompt templates); () for a text field."""
    feature = _feature_at(builder.info.features, path) if path else None
    if not isinstance(feature, tfds.features.ClassLabel):
        return ()
    templates = prompt_templates(data_config.name)
    return tuple(tuple(class_prompts((name,), templates)) for name in feature.names)


def check_label(data_config, builder, label: str | None = None) -> None:
    """ConfigError unless the data set has the feature ``label`` (default ``data_config.label``; "" reads
    no label, as for an image-text corpus)."""
    label = label or data_config.label
    if label and label not in builder.info.features:
        available = ", ".join(sorted(builder.info.features))
        raise ConfigError(
            f"label {label!r} is not a feature of data set {data_config.name!r}, which has "
            f"{available}; set eval.label or eval.extra_labels (probes) or data.label (training data) to "
            "one of them"
        )


def undecoded_source(builder, split: str):
    """The records of ``split`` with their images left as encoded bytes (labels and text read as usual)."""
    skipped = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
               if isinstance(feature, tfds.features.Image)}
    return builder.as_data_source(split=split, decoders=skipped)


def _read_labels(source, indices: np.ndarray, key: str) -> np.ndarray:
    return np.asarray([record[key] for record in source.__getitems__(indices.tolist())], np.int64)


def per_class_indices(data_config, split: str, per_class: int) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class of ``data.label`` in ``split``: the first ones
    of each class in an order of the split shuffled by SUBSET_SEED, so every run and probe gets the same
    ones. Reads the labels alone, in chunks of that order, and stops once every class has its examples;
    DataError naming the classes that have fewer."""
    builder = ensure_built(data_config)
    check_label(data_config, builder)
    feature = builder.info.features[data_config.label]
    if not isinstance(feature, tfds.features.ClassLabel):
        raise ConfigError(f"a per-class subset needs a class label, but {data_config.label!r} of "
                          f"{data_config.name!r} is {type(feature).__name__}; probe on the first examples "
                          "(--max-train) instead")
    source = undecoded_source(builder, split)
    order = np.random.default_rng(SUBSET_SEED).permutation(len(source))
    counts, chosen = np.zeros(feature.num_classes, np.int64), []
    for start in range(0, len(order), LABEL_CHUNK):
        chunk = order[start:start + LABEL_CHUNK]
        for index, label in zip(chunk, _read_labels(source, chunk, data_config.label), strict=True):
            if 0 <= label < feature.num_classes and counts[label] < per_class:
                counts[label] += 1
                chosen.append(index)
        if counts.min() == per_class:
            return np.sort(np.asarray(chosen, np.int64))
    short = np.flatnonzero(counts < per_class)
    named = ", ".join(f"{feature.names[c]} ({counts[c]})" for c in short[:5])
    raise DataError(f"{len(short)} of {feature.num_classes} classes of {data_config.label!r} have fewer than "
                    f"{per_class} examples in split {split!r} of {data_config.name!r} ({named}"
                    f"{', ...' if len(short) > 5 else ''}); ask for at most {counts.min()} per class")


def split_labels(data_config, split: str, keys, max_examples: int | None = None,
                 per_class: int = 0) -> dict[str, np.ndarray]:
    """{key: int32 [N]} of the examples ``make_eval_iterator`` reads with the same ``max_examples`` and
    ``per_class``, in the order one pass over a single process yields them; ConfigError for a key the data
    set lacks. Images are not decoded."""
    builder = ensure_built(data_config)
    for key in keys:
        check_label(data_config, builder, key)
    source = undecoded_source(builder, split)
    if per_class:
        indices = per_class_indices(data_config, split, per_class)
    else:
        indices = np.arange(len(source) if max_examples is None else min(max_examples, len(source)))
    return {key: _read_labels(source, indices, key).astype(np.int32) for key in keys}


def _as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def pick_caption(value, draw: tuple[int, ...] = ()) -> str:
    """The caption of a record's text feature: the string itself, or one of a sequence of strings, drawn
    uniformly by the key ``draw`` (seed, process index, position in the training stream), the first one
    without a key (evaluation); "" for an empty sequence."""
    if isinstance(value, bytes | str):
        return _as_text(value)
    captions = list(value)
    if not captions:
        return ""
    chosen = np.random.default_rng([*draw, CAPTION_DRAW]).integers(len(captions)) if draw else 0
    return _as_text(captions[chosen])


def _record_at(record: dict, path: tuple[str, ...]):
    for part in path:
        record = record[part]
    return record


@dataclasses.dataclass(frozen=True)
class ToExample:
    """Turns one TFDS record into the batch layout (one example, no batch axis); ``draw`` keys the choice
    among several captions of one record (see ``pick_caption``) and the random ops of the image
    transform (scaling.data.transforms)."""

    ops: tuple[Op, ...]
    label_key: str  # "" for a data set without labels (an image-text corpus): label 0
    caption_path: tuple[str, ...] | None
    max_caption_len: int
    tokenizer: Tokenizer
    class_captions: tuple[tuple[str, ...], ...] = ()  # per class, for a class-label caption field

    def caption(self, record: dict, draw: tuple[int, ...]) -> str:
        if not self.caption_path:
            return ""
        value = _record_at(record, self.caption_path)
        return pick_caption(self.class_captions[int(value)] if self.class_captions else value, draw)

    def __call__(self, record: dict, draw: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
        image = apply_ops(self.ops, record["image"], draw)
        caption = self.caption(record, draw)
        tokens, mask = self.tokenizer.encode_batch([caption], self.max_caption_len)
        return {
            "image": image,
            "label": np.asarray(record[self.label_key] if self.label_key else 0, dtype=np.int32),
            "caption_tokens": tokens[0],
            "caption_mask": mask[0],
        }


def make_transform(data_config, builder, training: bool = False) -> ToExample:
    """record -> example, the image through ``data.train_transform`` (``training``) or
    ``data.eval_transform``."""
    check_label(data_config, builder)
    path = caption_path(data_config, builder)
    return ToExample(
        ops=transform_ops(data_config, training),
        label_key=data_config.label,
        caption_path=path,
        max_caption_len=caption_length(data_config),
        tokenizer=get_tokenizer(data_config.tokenizer),
        class_captions=class_captions(data_config, builder, path),
    )


# ----------------------------------------------------------------------------- iterators


def make_train_transform(data_config, builder, stream: tuple[int, ...]) -> MixedCaptions:
    """(stream position, record) -> example, the caption at the level `data.caption_mix` draws for that
    position of `stream` (seed, process index); `data.caption_level` for every example without a mix."""
    mix = training_mix(data_config)
    return MixedCaptions(tuple(make_transform(at_level(data_config, level), builder, training=True)
                                 for level, _ in mix),
                         tuple(proportion for _, proportion in mix), stream)


def per_process_batch_size(batch_size: int, process_count: int) -> int:
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    return batch_size // process_count


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")


@dataclasses.dataclass(frozen=True)
class Subset:
    """The records of ``source`` at ``indices``, in that order (a grain random-access source)."""

    source: object
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        return self.source[int(self.indices[position])]


def _sharded_source(builder, split: str, process_index: int, process_count: int,
                    max_examples: int | None = None, indices: np.ndarray | None = None) -> grain.MapDataset:
    source = builder.as_data_source(split=split)
    dataset = grain.MapDataset.source(source if indices is None else Subset(source, indices))
    if max_examples is not None and indices is None:
        dataset = dataset[:max_examples]
    return dataset[process_index::process_count]


def _ensure_flags_parsed() -> None:
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _to_iterator(dataset: grain.MapDataset, worker_count: int) -> grain.DatasetIterator:
    read = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH_BATCHES)
    iter_dataset = dataset.to_iter_dataset(read)
    if worker_count > 0:
        _ensure_flags_parsed()
        workers = grain.MultiprocessingOptions(num_workers=worker_count)
        iter_dataset = iter_dataset.mp_prefetch(workers)
    return iter(iter_dataset)


def make_train_iterator(data_config, *, batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
    """Infinite iterator of this process's training batches of batch_size // process_count.

    The shard is shuffled with `seed` and reshuffled every epoch; batches may straddle epochs.
    `get_state()` gives a JSON-serialisable dict; `set_state(state)` on a fresh iterator made
    with the same arguments resumes exactly where that state was taken.
    """
    _check_process(process_index, process_count)
    local_batch = per_process_batch_size(batch_size, process_count)
    builder = ensure_built(data_config)
    dataset = _sharded_source(builder, data_config.train_split, process_index, process_count)
    dataset = (
        dataset.shuffle(seed=seed)
        .repeat()
        .map_with_index(make_train_transform(data_config, builder, (seed, process_index)))
        .batch(local_batch, drop_remainder=True)
    )
    return _to_iterator(dataset, data_config.worker_count)


def make_eval_iterator(data_config, split: str, *, batch_size: int, process_index: int = 0,
                       process_count: int = 1, max_examples: int | None = None,
                       per_class: int = 0) -> grain.DatasetIterator:
    """One unshuffled pass over this process's shard of `split` (of its first `max_examples`, or of
    `per_class` examples of each class of `data.label`, in split order: ``per_class_indices``).

    Batches hold batch_size // process_count examples except the last, which keeps the remainder
    (it is smaller, not dropped and not padded). Processes may end up with one batch more or less.
    """
    _check_process(process_index, process_count)
    local_batch = per_process_batch_size(batch_size, process_count)
    builder = ensure_built(data_config)
    indices = per_class_indices(data_config, split, per_class) if per_class else None
    dataset = _sharded_source(builder, split, process_index, process_count, max_examples, indices)
    dataset = dataset.map(make_transform(data_config, builder)).batch(local_batch)
    return _to_iterator(dataset, data_config.worker_count)
