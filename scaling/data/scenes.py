"""The `scenes` data set: procedurally generated image-caption pairs, built by TFDS from code.

Owns the scene sampler (objects with shape, colour, size, position and rotation on a cluttered
background), the renderer, the captions at four detail levels and the TFDS builder `scenes`.

Every example is a pure function of (split, index): the scene record comes from a seed derived from
both, so a split is reproducible and the same scenes appear at every image size. The main object is
the largest one (strictly larger size class than every distractor); `label` is its shape.

Labels: `label` (main shape), `count` (number of objects; class index = count - 1), `color`,
`size` and `position` (of the main object). Captions: `caption_none` (empty), `caption_short`
("a red circle"), `caption_medium` (every object, no positions) and `caption_descriptive` (every
object with size and position, plus the background; phrasing varies with the example's rng).
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from scaling.data.captions import CAPTION_LEVELS
from scaling.data.local_builder import LocalBuilder

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "crescent")
COLORS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 35),
    "green": (40, 165, 55),
    "cyan": (40, 200, 215),
    "blue": (40, 75, 225),
    "purple": (140, 55, 200),
    "pink": (245, 120, 190),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 0.2, "medium": 0.32, "large": 0.46}
SIZE_NAMES = tuple(SIZES)
REGION_GRID = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
REGIONS = tuple(name for row in REGION_GRID for name in row)
MAX_OBJECTS = 4
COUNT_NAMES = tuple(str(n) for n in range(1, MAX_OBJECTS + 1))
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
BASE_SEED = 20240917

_SUPERSAMPLE = 4
_COLOR_JITTER = 22
_SIZE_JITTER = 0.15
_MIN_SEPARATION = 0.9
_PLACEMENT_TRIES = 30
_NUMBER_WORDS = ("one", "two", "three", "four")
_SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
_STAR_INNER = 0.45
_DIAMOND_ASPECT = 0.6
_CROSS_ARM = 1 / 3
_RING_INNER = 0.55
_CRESCENT_OFFSET = 0.45


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object; x, y and radius are fractions of the image side, angle in radians."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    radius: float
    angle: float
    rgb: tuple[int, int, int]

    @property
    def region(self) -> str:
        return region_name(self.x, self.y)


@dataclasses.dataclass(frozen=True)
class Background:
    """A two-colour linear gradient with Gaussian noise and a few faint lines."""

    start_rgb: tuple[int, int, int]
    end_rgb: tuple[int, int, int]
    gradient_angle: float
    noise_std: float
    lines: tuple[tuple[float, float, float, float, int, float], ...]  # x0, y0, x1, y1, grey, alpha


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects, the main (largest) one first, on a background."""

    objects: tuple[SceneObject, ...]
    background: Background

    @property
    def main(self) -> SceneObject:
        return self.objects[0]


# ----------------------------------------------------------------------------- sampling


def example_rng(split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one stream (0: scene, 1: rendering noise) of example `index` of `split`."""
    return np.random.default_rng([BASE_SEED, SPLIT_IDS[split], index, stream])


def region_name(x: float, y: float) -> str:
    column = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    return REGION_GRID[row][column]


def _uniform_in_cell(rng: np.random.Generator, cell: int, radius: float) -> float:
    low = max(cell / 3, radius)
    high = min((cell + 1) / 3, 1 - radius)
    return float(rng.uniform(low, high)) if high > low else 0.5


def _jittered_rgb(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color], dtype=np.int32)
    jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(base + jitter, 0, 255))


def sample_object(rng: np.random.Generator, size: str) -> SceneObject:
    """An object of the given size class at a uniformly chosen region."""
    radius = SIZES[size] / 2 * float(rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER))
    row, column = divmod(int(rng.integers(len(REGIONS))), 3)
    color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    return SceneObject(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        color=color,
        size=size,
        x=_uniform_in_cell(rng, column, radius),
        y=_uniform_in_cell(rng, row, radius),
        radius=radius,
        angle=float(rng.uniform(0, 2 * math.pi)),
        rgb=_jittered_rgb(rng, color),
    )


def _overlaps(candidate: SceneObject, placed: list[SceneObject]) -> bool:
    return any(
        math.hypot(candidate.x - other.x, candidate.y - other.y)
        < _MIN_SEPARATION * (candidate.radius + other.radius)
        for other in placed
    )


def _place(rng: np.random.Generator, size: str, placed: list[SceneObject]) -> SceneObject | None:
    for _ in range(_PLACEMENT_TRIES):
        candidate = sample_object(rng, size)
        if not _overlaps(candidate, placed):
            return candidate
    return None


def sample_background(rng: np.random.Generator) -> Background:
    def dull_rgb() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(10, 125, size=3))

    lines = tuple(
        (*(float(v) for v in rng.uniform(0, 1, size=4)), int(rng.integers(120, 256)),
         float(rng.uniform(0.15, 0.35)))
        for _ in range(int(rng.integers(0, 4)))
    )
    return Background(
        start_rgb=dull_rgb(),
        end_rgb=dull_rgb(),
        gradient_angle=float(rng.uniform(0, 2 * math.pi)),
        noise_std=float(rng.uniform(3, 14)),
        lines=lines,
    )


def sample_scene(rng: np.random.Generator) -> Scene:
    """One to four non-overlapping objects; distractors are a smaller size class than the main."""
    main_size = SIZE_NAMES[int(rng.integers(1, 3))]
    smaller = SIZE_NAMES[: SIZE_NAMES.index(main_size)]
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    placed = [sample_object(rng, main_size)]
    distractor_sizes = sorted(
        (smaller[int(rng.integers(len(smaller)))] for _ in range(wanted - 1)),
        key=SIZE_NAMES.index,
        reverse=True,
    )
    for size in distractor_sizes:
        obj = _place(rng, size, placed)
        if obj is not None:
            placed.append(obj)
    return Scene(objects=tuple(placed), background=sample_background(rng))


# ----------------------------------------------------------------------------- rendering


def _regular_polygon(n: int, radius: float, angle: float, phase: float = 0.0):
    return [
        (radius * math.cos(angle + phase + 2 * math.pi * k / n),
         radius * math.sin(angle + phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _rotate(points, angle: float):
    cos, sin = math.cos(angle), math.sin(angle)
    return [(px * cos - py * sin, px * sin + py * cos) for px, py in points]


def shape_outline(shape: str, radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices, centred on the origin, for the polygonal shapes."""
    if shape == "square":
        return _regular_polygon(4, radius, angle, math.pi / 4)
    if shape == "triangle":
        return _regular_polygon(3, radius, angle, -math.pi / 2)
    if shape == "diamond":
        half_width = radius * _DIAMOND_ASPECT
        return _rotate([(0, -radius), (half_width, 0), (0, radius), (-half_width, 0)], angle)
    if shape == "cross":
        a, r = radius * _CROSS_ARM, radius * 0.95
        points = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a),
                  (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
        return _rotate(points, angle)
    if shape == "star":
        outer = _regular_polygon(5, radius, angle, -math.pi / 2)
        inner = _regular_polygon(5, radius * _STAR_INNER, angle, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    raise ValueError(f"{shape!r} is not a polygonal shape")


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, fill: int) -> None:
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)


def object_mask(obj: SceneObject, image_size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one object, float32 [image_size, image_size]."""
    side = image_size * _SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, radius = obj.x * side, obj.y * side, obj.radius * side
    if obj.shape in ("circle", "ring", "crescent"):
        _disc(draw, cx, cy, radius, 255)
        if obj.shape == "ring":
            _disc(draw, cx, cy, radius * _RING_INNER, 0)
        if obj.shape == "crescent":
            offset = radius * _CRESCENT_OFFSET
            _disc(draw, cx + offset * math.cos(obj.angle), cy + offset * math.sin(obj.angle),
                  radius * 0.85, 0)
    else:
        points = [(cx + px, cy + py) for px, py in shape_outline(obj.shape, radius, obj.angle)]
        draw.polygon(points, fill=255)
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _gradient(background: Background, image_size: int) -> np.ndarray:
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    direction = (math.cos(background.gradient_angle), math.sin(background.gradient_angle))
    t = np.clip(xs * direction[0] + ys * direction[1] + 0.5, 0, 1)[..., None]
    start = np.asarray(background.start_rgb, np.float32)
    end = np.asarray(background.end_rgb, np.float32)
    return start * (1 - t) + end * t


def _lines_layer(background: Background, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    side = image_size * _SUPERSAMPLE
    value = Image.new("L", (side, side), 0)
    alpha = Image.new("L", (side, side), 0)
    for x0, y0, x1, y1, grey, opacity in background.lines:
        ends = [(x0 * side, y0 * side), (x1 * side, y1 * side)]
        ImageDraw.Draw(value).line(ends, fill=grey, width=_SUPERSAMPLE)
        ImageDraw.Draw(alpha).line(ends, fill=int(opacity * 255), width=_SUPERSAMPLE)
    shrink = lambda im: np.asarray(im.resize((image_size, image_size), Image.Resampling.BOX))
    return shrink(value).astype(np.float32), shrink(alpha).astype(np.float32) / 255.0


def render_background(background: Background, image_size: int, rng: np.random.Generator):
    image = _gradient(background, image_size)
    if background.lines:
        value, alpha = _lines_layer(background, image_size)
        image = image * (1 - alpha[..., None]) + value[..., None] * alpha[..., None]
    noise = rng.normal(0, background.noise_std, size=image.shape).astype(np.float32)
    return image + noise


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [image_size, image_size, 3]; smaller objects are drawn last (never hidden)."""
    image = render_background(scene.background, image_size, rng)
    for obj in scene.objects:
        coverage = object_mask(obj, image_size)[..., None]
        image = image * (1 - coverage) + np.asarray(obj.rgb, np.float32) * coverage
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(*words: str) -> str:
    phrase = " ".join(words)
    return f"{_article(phrase)} {phrase}"


def _where(rng: np.random.Generator, region: str) -> str:
    if region == "center":
        options = ["in the center", "in the middle", "at the center"]
    elif region in ("left", "right"):
        options = [f"on the {region}", f"at the {region}", f"to the {region}"]
    elif region in ("top", "bottom"):
        options = [f"at the {region}", f"near the {region}", f"toward the {region}"]
    else:
        options = [f"in the {region}", f"at the {region}", f"toward the {region}"]
    return str(rng.choice(options))


def _join(phrases: list[str], rng: np.random.Generator | None = None) -> str:
    if len(phrases) == 1:
        return phrases[0]
    last = " and " if rng is None or rng.random() < 0.7 else ", plus "
    return ", ".join(phrases[:-1]) + last + phrases[-1]


def caption_short(scene: Scene) -> str:
    return _with_article(scene.main.color, scene.main.shape)


def caption_medium(scene: Scene) -> str:
    return _join([_with_article(obj.color, obj.shape) for obj in scene.objects])


def _describe_object(obj: SceneObject, rng: np.random.Generator, may_invert: bool) -> str:
    size_word = str(rng.choice(_SIZE_WORDS[obj.size]))
    thing = _with_article(size_word, obj.color, obj.shape)
    where = _where(rng, obj.region)
    return f"{where}, {thing}" if may_invert and rng.random() < 0.3 else f"{thing} {where}"


def describe_background(background: Background) -> str:
    brightness = np.mean([background.start_rgb, background.end_rgb])
    tone = "dark" if brightness < 60 else "dull"
    texture = "grainy " if background.noise_std > 9 else ""
    lines = " with faint lines" if background.lines else ""
    return f"a {tone} {texture}background{lines}"


def caption_descriptive(scene: Scene, rng: np.random.Generator) -> str:
    """Every object with size, colour, shape and position, main first; phrasing drawn from `rng`."""
    template = int(rng.integers(4))
    main, *others = [_describe_object(obj, rng, template == 1) for obj in scene.objects]
    rng.shuffle(others)
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    background = describe_background(scene.background)
    if template == 0:
        text = f"{_join([main, *others], rng)}, on {background}"
    elif template == 1:
        text = f"{_NUMBER_WORDS[n - 1]} {noun} on {background}: {'; '.join([main, *others])}"
    elif template == 2:
        rest = f" with {_join(others, rng)}" if others else ""
        text = f"a picture of {main}{rest}, on {background}"
    else:
        verb = "is" if n == 1 else "are"
        text = f"there {verb} {_NUMBER_WORDS[n - 1]} {noun}: {_join([main, *others], rng)}"
    return text[0].upper() + text[1:] + "."


def scene_captions(split: str, index: int) -> dict[str, str]:
    """The captions of example `index` of `split`, without rendering its image."""
    scene_rng = example_rng(split, index, stream=0)
    return captions(sample_scene(scene_rng), scene_rng)


def captions(scene: Scene, rng: np.random.Generator) -> dict[str, str]:
    return {
        "caption_none": "",
        "caption_short": caption_short(scene),
        "caption_medium": caption_medium(scene),
        "caption_descriptive": caption_descriptive(scene, rng),
    }


# ----------------------------------------------------------------------------- examples


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def generate_example(split: str, index: int, image_size: int) -> dict:
    """Example `index` of `split` with the image as a uint8 array (the builder stores it as PNG)."""
    scene_rng = example_rng(split, index, stream=0)
    scene = sample_scene(scene_rng)
    main = scene.main
    return {
        "image": render_scene(scene, image_size, example_rng(split, index, stream=1)),
        "label": main.shape,
        "count": COUNT_NAMES[len(scene.objects) - 1],
        "color": main.color,
        "size": main.size,
        "position": main.region,
        **captions(scene, scene_rng),
    }


# ----------------------------------------------------------------------------- TFDS builder

DEFAULT_SPLIT_SIZES = (("train", 20000), ("validation", 2000), ("test", 4000))
SMALL_SPLIT_SIZES = (("train", 2000), ("validation", 500), ("test", 1000))


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
    """Image side in pixels and the number of examples per split."""

    image_size: int = 32
    split_sizes: tuple[tuple[str, int], ...] = DEFAULT_SPLIT_SIZES


def scenes_config(image_size: int, small: bool = False) -> ScenesConfig:
    name = f"{image_size}_small" if small else str(image_size)
    sizes = SMALL_SPLIT_SIZES if small else DEFAULT_SPLIT_SIZES
    return ScenesConfig(name=name, image_size=image_size, split_sizes=sizes,
                        description=f"{image_size}x{image_size} images, splits {dict(sizes)}")


class Scenes(LocalBuilder):
    """Procedural compositional image-caption scenes (no download)."""

    name = "scenes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        scenes_config(32), scenes_config(16), scenes_config(64),
        scenes_config(32, small=True), scenes_config(16, small=True),
    ]
    DEFAULT_CONFIG_NAME = "32"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        label = lambda names: tfds.features.ClassLabel(names=list(names))
        features = {
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "label": label(SHAPES),
            "count": label(COUNT_NAMES),
            "color": label(COLOR_NAMES),
            "size": label(SIZE_NAMES),
            "position": label(REGIONS),
            **{f"caption_{level}": tfds.features.Text() for level in CAPTION_LEVELS},
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            split: self._generate_examples(split, count)
            for split, count in self.builder_config.split_sizes
        }

    def _generate_examples(self, split: str, count: int):
        size = self.builder_config.image_size
        for index in range(count):
            example = generate_example(split, index, size)
            example["image"] = encode_png(example["image"])
            yield index, example
