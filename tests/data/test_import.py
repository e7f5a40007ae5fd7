"""``scaling data import``: webdataset shards written here (one corrupt JPEG, one sample without caption)
become a data set CLIP trains on; the skipped samples are reported; a killed import resumes; bad input gets
one clear line and keeps what was imported."""

import io
import json
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import read_jsonl, scaling
from PIL import Image

from scaling.data import importer

CLIP = "experiments/clip.py:size=mu"


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shard(path, samples: dict[str, dict[str, bytes]]) -> str:
    with tarfile.open(path, "w") as archive:
        for key, files in samples.items():
            for extension, data in files.items():
                member = tarfile.TarInfo(f"{key}.{extension}")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    return str(path)


@pytest.fixture
def shards(tmp_path):
    """Three shards of 12 samples: 10 usable (two captioned by .json), a truncated JPEG, a bare image."""
    text = lambda i: f"a photo number {i}".encode()
    first = {f"{i:05d}": {"jpg": jpeg(i), "txt": text(i)} for i in range(5)}
    second = {f"{i:05d}": {"jpg": jpeg(i), "txt": text(i)} for i in range(5, 8)}
    second["00008"] = {"jpg": jpeg(8)[:200], "txt": text(8)}
    second["00009"] = {"jpg": jpeg(9)}
    third = {f"{i:05d}": {"jpg": jpeg(i), "json": json.dumps({"caption": text(i).decode()}).encode()}
             for i in range(10, 12)}
    return [write_shard(tmp_path / f"{n:05d}.tar", shard) for n, shard in enumerate((first, second, third))]


def test_imported_shards_train_clip_and_the_skipped_samples_are_reported(shards, tmp_path, capsys):
    assert scaling("data", "import", *shards, "--name", "webtiny", "--data-dir", tmp_path / "tfds") == 0
    out = capsys.readouterr().out
    assert "imported 10 examples from 3 shards" in out
    assert "skipped 1 unreadable images and 1 samples without caption" in out
    workdir = tmp_path / "run"
    assert scaling("train", "--config", CLIP, "--workdir", workdir, "--config.data.name=webtiny",
                   f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.caption_field=caption",
                   "--config.data.label=", "--config.data.max_caption_len=24", "--config.batch_size=4",
                   "--config.total_steps=3", "--config.log_every=1", "--config.optim.warmup_steps=1",
                   "--config.eval.num_points=0", "--config.eval.val_split=", "--config.eval.zero_shot=false",
                   "--config.eval.batch_size=4") == 0
    losses = [record["loss"] for record in read_jsonl(workdir / "metrics.jsonl") if record["kind"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_killed_import_resumes_at_the_shard_it_was_writing(shards, tmp_path, monkeypatch):
    serialize = importer.tfds.features.FeaturesDict.serialize_example

    def killed_in_the_second_shard(features, example):
        if example["key"] == "00006":
            raise KeyboardInterrupt
        return serialize(features, example)

    monkeypatch.setattr(importer.tfds.features.FeaturesDict, "serialize_example", killed_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        importer.import_shards(shards, "webtiny", tmp_path)
    monkeypatch.undo()
    lines = []
    counts = importer.import_shards(shards, "webtiny", tmp_path, log=lines.append)
    assert counts == {"examples": 10, "unreadable": 1, "uncaptioned": 1, "shards": 3}
    assert "(imported before)" in lines[0] and "(imported before)" not in lines[1]
    keys = sorted(record["key"].decode() for record in tfds_source(tmp_path, "webtiny"))
    assert keys == [f"{i:05d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 10, 11)]


def tfds_source(data_dir, name):
    source = tfds.builder(name, data_dir=data_dir).as_data_source(split="train")
    return [source[i] for i in range(len(source))]


def not_a_tar(tmp_path) -> str:
    (tmp_path / "plain.tar").write_bytes(b"not a tar")
    return str(tmp_path / "plain.tar")


@pytest.mark.parametrize("bad_shard, message", [
    (lambda tmp: str(tmp / "missing.tar"), "no such shard: {tmp}/missing.tar; pass existing webdataset"),
    (lambda tmp: write_shard(tmp / "text.tar", {"0": {"txt": b"no image"}}),
     "{tmp}/text.tar holds no image (jpg, jpeg, png, webp); webdataset shards hold"),
    (not_a_tar, "{tmp}/plain.tar is not a readable tar"),
])
def test_bad_input_is_one_line_and_keeps_the_shards_imported_before(shards, tmp_path, capsys, bad_shard,
                                                                    message):
    into = ("--name", "web", "--data-dir", tmp_path / "tfds")
    assert scaling("data", "import", shards[0], bad_shard(tmp_path), *into) != 0
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {message.format(tmp=tmp_path)}")
    assert scaling("data", "import", shards[0], shards[1], *into) == 0
    imported_before = "(imported before)" in capsys.readouterr().out
    assert imported_before == ("no such shard" not in message)  # a missing shard stops before any is read
