"""``scaling data import``: image-text webdataset shards (img2dataset's output: ``<key>.jpg`` with
``<key>.txt`` or a ``caption`` in ``<key>.json``) to a TFDS data set in ArrayRecord shards, which the grain
pipeline reads by ``data.name``.

Shards stream from local paths or ``gs://`` (etils.epath). Image bytes are stored as they come (checked by
a reduced-size decode, not re-encoded); a sample whose image does not decode or that has no caption is
skipped and counted. Each input shard becomes one ArrayRecord part, written under a temporary name and
renamed when whole, with a small record of its counts, so a killed import resumes at the first shard
without one. When every shard is done the parts get TFDS's shard names and TFDS's own metadata
(dataset_info.json, features.json) is written beside them: one ``train`` split with features ``image``,
``caption`` and ``key`` (train with ``data.caption_field=caption`` and ``data.label=""``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from scaling.errors import DataError
from scaling.workdir import write_json_atomic

VERSION = "1.0.0"
SPLIT = "train"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARTS = ".import"  # the parts and their records while an import is under way
CHECK_SIZE = (64, 64)  # a JPEG is checked by decoding at most 1/8 scale, about this size


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "caption": tfds.features.Text(),
        "key": tfds.features.Text(),
    })


@dataclasses.dataclass
class ShardCounts:
    """What one input shard gave: examples written, samples skipped, and the part's size."""

    source: str
    examples: int = 0
    unreadable: int = 0
    uncaptioned: int = 0
    num_bytes: int = 0


def _samples(shard: epath.Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a webdataset tar, members grouped by key (the name up to
    the first dot of the file name), in the order of the tar."""
    key, files = None, {}
    try:
        with shard.open("rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, filename = member.name.rpartition("/")
                stem, _, extension = filename.partition(".")
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key and files:
                    yield key, files
                    files = {}
                key = member_key
                files[extension.lower()] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{shard} is not a readable tar ({error}); pass img2dataset's webdataset .tar "
                        "shards") from None
    if files:
        yield key, files


def _image_bytes(files: dict[str, bytes]) -> bytes | None:
    return next((files[ext] for ext in IMAGE_EXTENSIONS if ext in files), None)


def _caption(files: dict[str, bytes]) -> str | None:
    if "txt" in files:
        return files["txt"].decode("utf-8", errors="replace").strip() or None
    if "json" in files:
        try:
            caption = json.loads(files["json"]).get("caption")
        except (ValueError, AttributeError):
            return None
        return caption.strip() or None if isinstance(caption, str) else None
    return None


def decodes(image: bytes) -> bool:
    """Whether ``image`` decodes (a JPEG at reduced scale: its whole entropy stream, few pixels)."""
    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.draft("RGB", CHECK_SIZE)
            opened.load()
        return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _examples(shard: epath.Path, counts: ShardCounts, encoder) -> Iterator[tuple[str, bytes]]:
    """(key, serialized example) of the usable samples of ``shard``, counting the others in ``counts``;
    DataError for a tar without any image."""
    images = 0
    for key, files in _samples(shard):
        image = _image_bytes(files)
        if image is None:
            continue
        images += 1
        caption = _caption(files)
        if caption is None:
            counts.uncaptioned += 1
        elif not decodes(image):
            counts.unreadable += 1
        else:
            counts.examples += 1
            yield key, encoder({"image": image, "caption": caption, "key": key})
    if not images:
        raise DataError(f"{shard} holds no image ({', '.join(IMAGE_EXTENSIONS)}); webdataset shards hold "
                        "<key>.jpg with <key>.txt per sample, as img2dataset writes them")


def _import_shard(shard: epath.Path, part: Path, encoder) -> ShardCounts:
    """Writes ``shard``'s examples to ``part`` (renamed into place when whole) and its counts beside it."""
    counts = ShardCounts(source=str(shard))
    partial = part.with_name(part.name + ".tmp")
    tfds.core.file_adapters.ArrayRecordFileAdapter.write_examples(
        partial, _examples(shard, counts, encoder))
    counts.num_bytes = partial.stat().st_size
    partial.replace(part)
    write_json_atomic(part.with_suffix(".json"), dataclasses.asdict(counts))
    return counts


def _done_counts(part: Path, shard: epath.Path) -> ShardCounts | None:
    record = part.with_suffix(".json")
    if not record.exists():
        return None
    counts = ShardCounts(**json.loads(record.read_text()))
    if counts.source != str(shard):
        raise DataError(f"{part.parent} holds an unfinished import of other shards (part {part.stem} came "
                        f"from {counts.source}, not {shard}); pass the same shards in the same order, or "
                        "delete that folder to start again")
    return counts


def _template(version_dir: Path, name: str) -> tfds.core.ShardedFileTemplate:
    return tfds.core.ShardedFileTemplate(data_dir=epath.Path(version_dir), dataset_name=name, split=SPLIT,
                                         filetype_suffix="array_record")


def _finish(name: str, version_dir: Path, parts: Path, counts: list[ShardCounts]) -> None:
    """The parts under TFDS's shard names (the empty ones left out), then TFDS's metadata."""
    written = [(index, count) for index, count in enumerate(counts) if count.examples]
    template = _template(version_dir, name)
    for shard_index, (index, _) in enumerate(written):
        part = parts / f"{index:05d}.array_record"
        if part.exists():  # else moved by a finish that was killed before the metadata
            part.replace(template.sharded_filepath(shard_index=shard_index, num_shards=len(written)))
    split = tfds.core.SplitInfo(name=SPLIT, shard_lengths=[count.examples for _, count in written],
                                num_bytes=sum(count.num_bytes for _, count in written),
                                filename_template=template)
    identity = tfds.core.dataset_info.DatasetIdentity(
        name=name, version=tfds.core.Version(VERSION), data_dir=str(version_dir), module_name=__name__)
    info = tfds.core.DatasetInfo(builder=identity, features=features(),
                                 description=f"Imported by `scaling data import` from {len(counts)} "
                                             "webdataset shards.",
                                 split_dict=tfds.core.SplitDict([split]))
    info.set_file_format(tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
    info.write_to_directory(version_dir)
    for record in parts.glob("*.json"):
        record.unlink()
    parts.rmdir()


def check_shards(shards: Sequence[str]) -> list[epath.Path]:
    paths = [epath.Path(shard) for shard in shards]
    missing = [str(path) for path in paths if not path.is_file()]
    if not paths:
        raise DataError("no shards given; pass img2dataset's .tar files, e.g. shards/{00000..00009}.tar")
    if missing:
        raise DataError(f"no such shard: {', '.join(missing)}; pass existing webdataset .tar files")
    return paths


def import_shards(shards: Sequence[str], name: str, data_dir: Path,
                  log=print) -> dict[str, int]:
    """Imports ``shards`` as data set ``name`` under ``data_dir`` (resuming an import killed before);
    {examples, unreadable, uncaptioned, shards}."""
    if not name.isidentifier() or name != name.lower():
        raise DataError(f"--name {name!r}: a data set name is lower-case letters, digits and _, e.g. cc3m")
    paths = check_shards(shards)
    version_dir = data_dir / name / VERSION
    if (version_dir / "dataset_info.json").exists():
        raise DataError(f"{version_dir} already holds data set {name!r}; choose another --name or delete it")
    parts = version_dir / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    encoder = features().serialize_example
    counts = []
    for index, shard in enumerate(paths):
        part = parts / f"{index:05d}.array_record"
        done = _done_counts(part, shard)
        counts.append(done or _import_shard(shard, part, encoder))
        log(f"shard {index + 1}/{len(paths)} {shard}: {counts[-1].examples} examples"
            f"{' (imported before)' if done else ''}")
    total = {field: sum(getattr(count, field) for count in counts)
             for field in ("examples", "unreadable", "uncaptioned")}
    if not total["examples"]:
        raise DataError(f"no sample of the {len(paths)} shards has a readable image and a caption "
                        f"({total['unreadable']} unreadable images, {total['uncaptioned']} without caption)")
    _finish(name, version_dir, parts, counts)
    return {**total, "shards": len(paths)}

