"""Benchmark: input images/s on this host, from ArrayRecord through JPEG decode and the training transform,
with 0, 1 and 2 grain worker processes.

Writes webdataset shards of photo-sized JPEGs (smooth colour fields with noise, --width x --height, quality
90), imports them with ``scaling data import``'s code (its rate is printed too), then reads batches of the
training pipeline (``data.train_transform``, default ``inception_crop(224)|flip``) for each worker count,
rounds interleaved and repeated; prints the median images/s of each and the median over rounds of its ratio
to the first worker count in the same round. Beside it, the train step's images/s on this host for
``--objective`` at ``--model-size`` on ``--size`` px images (patch ``--patch-size``, 77-token captions, batch
``--batch-size``; ``benchmarks/train_step.py``'s timing, after compilation), and each worker count's ratio of
input to step images/s: input keeps up where it is at least 1. On a TPU host the step's rate is the per-chip
rate times the chips per host (``scaling plan --input-images-per-s`` compares them per planned run).
Run ``python benchmarks/input_throughput.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image
from train_step import ROOT, step_seconds

from scaling.config import load_config_file
from scaling.data import pipeline
from scaling.data.importer import import_shards

CAPTION_TOKENS = 77  # CLIP's text length, for the text towers and decoders of the timed step


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG of a smooth random colour field plus noise: decodes like a photo, not like pure noise."""
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
    pixels = np.clip(field + rng.integers(-12, 13, field.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(folder: Path, images: int, per_shard: int, width: int, height: int) -> list[str]:
    rng, paths = np.random.default_rng(0), []
    for start in range(0, images, per_shard):
        path = folder / f"{start // per_shard:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for index in range(start, min(start + per_shard, images)):
                for extension, data in (("jpg", photo(rng, width, height)), ("txt", b"a photo")):
                    member = tarfile.TarInfo(f"{index:08d}.{extension}")
                    member.size = len(data)
                    archive.addfile(member, io.BytesIO(data))
        paths.append(str(path))
    return paths


def data_config(data_dir: Path, transform: str, size: int, workers: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "throughput", "data_dir": str(data_dir), "image_size": size, "caption_level": "descriptive",
        "caption_field": "caption", "label": "", "max_caption_len": 16, "tokenizer": "byte",
        "worker_count": workers, "train_split": "train", "train_transform": transform,
    })


def images_per_second(config, batch_size: int, batches: int) -> float:
    """Images/s over ``batches`` batches, after those that start the workers and empty the prefetch
    buffer (read ahead before the clock starts)."""
    iterator = pipeline.make_train_iterator(config, batch_size=batch_size, seed=0)
    for _ in range(pipeline.PREFETCH_BATCHES + 1):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * batch_size / (time.perf_counter() - start)
    iterator.close()
    return rate


def step_config(objective: str, model_size: str, image_size: int, patch_size: int, batch_size: int):
    config = load_config_file(ROOT / "experiments" / f"{objective}.py", f"size={model_size}")
    config.batch_size, config.data.image_size, config.model.patch_size = batch_size, image_size, patch_size
    config.data.max_caption_len = CAPTION_TOKENS
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images written and imported")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--transform", default="inception_crop(224)|flip")
    parser.add_argument("--size", type=int, default=224, help="data.image_size the transform ends at")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=24, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the worker counts")
    parser.add_argument("--objective", default="clip", help="the objective whose train step is timed")
    parser.add_argument("--model-size", default="nano", help="its size (experiments' size ladder)")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shards = write_shards(folder, args.images, 128, args.width, args.height)
        start = time.perf_counter()
        import_shards(shards, "throughput", folder / "tfds", log=lambda line: None)
        imported = args.images / (time.perf_counter() - start)
        rates = {workers: [] for workers in args.workers}
        for _ in range(args.rounds):
            for workers in args.workers:
                config = data_config(folder / "tfds", args.transform, args.size, workers)
                rates[workers].append(images_per_second(config, args.batch_size, args.batches))

    config = step_config(args.objective, args.model_size, args.size, args.patch_size, args.batch_size)
    step_rate = args.batch_size / step_seconds(config, args.steps)[0]

    print(f"{args.images} JPEGs of {args.width}x{args.height}; import {imported:.0f} images/s; "
          f"train transform {args.transform!r}; median of {args.rounds} interleaved rounds")
    print(f"train step: {args.objective} size {args.model_size}, {args.size} px, patch {args.patch_size}, "
          f"batch {args.batch_size}: {step_rate:.1f} images/s on this host")
    base = rates[args.workers[0]]
    print(f"{'workers':>8} {'images/s':>10} {'x ' + str(args.workers[0]) + ' workers':>14} {'/ step':>8}")
    for workers, measured in rates.items():
        ratio = statistics.median(rate / first for rate, first in zip(measured, base, strict=True))
        median = statistics.median(measured)
        print(f"{workers:>8} {median:>10.0f} {ratio:>14.2f} {median / step_rate:>8.2f}")


if __name__ == "__main__":
    main()
