"""Image preprocessing by config: ``data.train_transform`` and ``data.eval_transform``, strings of ops
joined by "|", parsed once and applied per example in the grain pipeline (its workers, when it has them).

    square(N)                    shorter side to N (bicubic, antialiased), centre crop to N x N (the default,
                                 at N = data.image_size; the whole image, as the data sets here were read)
    resize(N)                    shorter side to N, aspect kept
    center_crop(N)               the central N x N (the image must be at least that big)
    inception_crop(N[, A])       a random box of area fraction in [A, 1] (default 0.05, as big_vision) and
                                 aspect ratio in [3/4, 4/3], resized to N x N
    flip                         left-right mirror with probability 1/2

e.g. ``inception_crop(224)|flip`` for training and ``resize(256)|center_crop(224)`` for evaluation. The
random ops draw from a generator keyed by (seed, process index, position in the training stream), so a rerun
and a resumed run read exactly the same pixels; evaluation reads each image once and takes no random op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from scaling.errors import ConfigError, DataError

TRANSFORM_DRAW = 2  # appended to a stream position's key for the transform's draws, apart from others
DEFAULT_MIN_AREA = 0.05
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10


def to_rgb(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] from greyscale [H, W] / [H, W, 1] or RGBA [H, W, 4]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _resized(image: np.ndarray, width: int, height: int, box=None) -> np.ndarray:
    """``image`` (or its ``box``, left-top-right-bottom) resized bicubic to width x height."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC, box=box))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """The shorter side to ``size``, the aspect ratio kept (to the nearest pixel)."""
    height, width = image.shape[:2]
    if min(height, width) == size:
        return image
    scale = size / min(height, width)
    return _resized(image, max(size, round(width * scale)), max(size, round(height * scale)))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if min(height, width) < size:
        raise DataError(f"center_crop({size}) of a {height}x{width} image; put resize({size}) or a larger "
                        "one before it in the transform")
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` (bicubic, antialiased), then centre-crops to a square."""
    return center_crop(resize(image, size), size)


def inception_box(height: int, width: int, rng: np.random.Generator,
                  min_area: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a box of area fraction in [min_area, 1] and aspect ratio (width /
    height) in ASPECT_RANGE, log-uniform, placed uniformly; the whole image after CROP_ATTEMPTS misses."""
    log_low, log_high = np.log(ASPECT_RANGE)
    for _ in range(CROP_ATTEMPTS):
        area = rng.uniform(min_area, 1.0) * height * width
        ratio = math.exp(rng.uniform(log_low, log_high))
        box_w, box_h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < box_w <= width and 0 < box_h <= height:
            left, top = rng.integers(0, width - box_w + 1), rng.integers(0, height - box_h + 1)
            return int(left), int(top), int(left + box_w), int(top + box_h)
    return 0, 0, width, height


def inception_crop(image: np.ndarray, size: int, min_area: float, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    return _resized(image, size, size, box=inception_box(height, width, rng, min_area))


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.random() < 0.5 else image


@dataclasses.dataclass(frozen=True)
class OpKind:
    """What an op name means: ``apply(image, rng, *args)``, its arguments (a positive integer size first
    when ``sized``, then optional fractions in (0, 1]), whether it draws, and whether its output is a
    square of its size."""

    apply: Callable[..., np.ndarray]
    usage: str
    sized: bool
    fractions: int = 0
    random: bool = False
    squares: bool = False


OPS = {
    "square": OpKind(lambda image, rng, size: resize_square(image, size), "square(N)", True, squares=True),
    "resize": OpKind(lambda image, rng, size: resize(image, size), "resize(N)", True),
    "center_crop": OpKind(lambda image, rng, size: center_crop(image, size), "center_crop(N)", True,
                          squares=True),
    "inception_crop": OpKind(
        lambda image, rng, size, min_area=DEFAULT_MIN_AREA: inception_crop(image, size, min_area, rng),
        "inception_crop(N[, min_area])", True, fractions=1, random=True, squares=True),
    "flip": OpKind(lambda image, rng: flip(image, rng), "flip", False, random=True),
}


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    args: tuple[float, ...] = ()

    @property
    def kind(self) -> OpKind:
        return OPS[self.name]


def _parse_args(text: str, kind: OpKind, field: str, item: str) -> tuple[float, ...]:
    parts = [part.strip() for part in text.split(",")] if text.strip() else []
    usage = f"{field}: {item!r} is not {kind.usage}"
    if len(parts) < int(kind.sized) or len(parts) > int(kind.sized) + kind.fractions:
        raise ConfigError(f"{usage} (N a size in pixels)")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ConfigError(f"{usage}: arguments are numbers") from None
    if kind.sized and not (values[0].is_integer() and values[0] > 0):
        raise ConfigError(f"{usage}: N is a positive whole number of pixels")
    if not all(0 < value <= 1 for value in values[int(kind.sized):]):
        raise ConfigError(f"{usage}: a fraction is in (0, 1]")
    return tuple(int(value) if i == 0 and kind.sized else value for i, value in enumerate(values))


def parse_transform(text: str, field: str) -> tuple[Op, ...]:
    """``"inception_crop(224)|flip"`` -> ops; ConfigError naming ``field`` for an unknown op or a bad
    argument."""
    ops = []
    for item in (part.strip() for part in text.split("|")):
        name, paren, rest = item.partition("(")
        name = name.strip()
        if name not in OPS:
            raise ConfigError(f"{field}: unknown op {name!r} in {text!r}; the ops are "
                              f"{', '.join(kind.usage for kind in OPS.values())}, joined by '|'")
        if paren and not rest.endswith(")"):
            raise ConfigError(f"{field}: {item!r} lacks its closing ')'; write e.g. {OPS[name].usage}")
        ops.append(Op(name, _parse_args(rest[:-1] if paren else "", OPS[name], field, item)))
    return tuple(ops)


def output_size(ops: tuple[Op, ...]) -> int | None:
    """The side of the square the ops end with, None when they do not end with a square."""
    size = None
    for op in ops:
        if op.kind.squares:
            size = op.args[0]
        elif op.kind.sized:
            size = None
    return size


def transform_ops(data_config, training: bool) -> tuple[Op, ...]:
    """The ops of ``data.train_transform`` (``training``) or ``data.eval_transform``, ``square(image_size)``
    where empty; ConfigError when they do not end with a data.image_size square, or when evaluation's
    draw."""
    field = "data.train_transform" if training else "data.eval_transform"
    text = data_config.get(field.partition(".")[2], "") or f"square({data_config.image_size})"
    ops = parse_transform(text, field)
    size = output_size(ops)
    if size != data_config.image_size:
        raise ConfigError(f"{field}: {text!r} ends with {f'{size}x{size} images' if size else 'no square'}, "
                          f"but data.image_size is {data_config.image_size}; end it with center_crop, square "
                          f"or inception_crop of {data_config.image_size}")
    random = [op.name for op in ops if op.kind.random]
    if random and not training:
        raise ConfigError(f"{field}: {', '.join(random)} draw at random, but evaluation reads each image "
                          "once as it is; use resize, center_crop and square")
    return ops


def apply_ops(ops: tuple[Op, ...], image: np.ndarray, draw: tuple[int, ...] = ()) -> np.ndarray:
    """uint8 [N, N, 3]: ``ops`` applied to ``image`` (any size, grey, RGB or RGBA), the random ones drawing
    from a generator keyed by ``draw`` (seed, process index, stream position)."""
    rng = np.random.default_rng([*draw, TRANSFORM_DRAW])
    image = to_rgb(image)
    for op in ops:
        image = op.kind.apply(image, rng, *op.args)
    return np.ascontiguousarray(image, dtype=np.uint8)
