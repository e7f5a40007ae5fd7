"""Image grids for what a person looks at after a run: completions, captioned images, generated samples."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

WHITE = 255


def as_rows(images_BHWC: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[B, H, W, C] -> [rows, columns, H, W, C], near-square by default, padded with white images."""
    count = images_BHWC.shape[0]
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    padded = np.full((rows * columns, *images_BHWC.shape[1:]), WHITE, np.uint8)
    padded[:count] = images_BHWC
    return padded.reshape(rows, columns, *images_BHWC.shape[1:])


def image_grid(
    images_RCHWC: np.ndarray, *, cell: int = 64, gap: int = 2, numbered: bool = False
) -> Image.Image:
    """uint8 images laid out rows x columns on white, each enlarged (nearest) to about ``cell`` pixels;
    ``numbered`` writes each image's row-major index in its corner."""
    rows, columns, height, width, _ = images_RCHWC.shape
    scale = max(1, cell // max(height, width))
    cell_h, cell_w = height * scale, width * scale
    grid = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for r in range(rows):
        for c in range(columns):
            left, top = gap + c * (cell_w + gap), gap + r * (cell_h + gap)
            tile = images_RCHWC[r, c].repeat(scale, axis=0).repeat(scale, axis=1)
            grid.paste(Image.fromarray(tile), (left, top))
            if numbered:
                draw.text((left + 2, top + 1), str(r * columns + c), fill="white", stroke_width=1,
                          stroke_fill="black")
    return grid
