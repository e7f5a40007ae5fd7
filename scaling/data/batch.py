"""The batch layout every consumer shares: the keys, shapes and dtypes of one batch, and synthetic batches
of that layout.

The grain pipeline yields it (scaling.data.pipeline), the planner compiles against it as abstract arrays,
and tests and benchmarks fill it with random content: ``image`` uint8 [B, H, W, 3], ``label`` int32 [B],
``caption_tokens`` int32 [B, T] and ``caption_mask`` int32 [B, T], T = ``caption_length(data)``.
"""

from __future__ import annotations

import numpy as np

from scaling.data.captions import caption_length

BATCH_KEYS = ("image", "label", "caption_tokens", "caption_mask")
FIRST_TEXT_TOKEN, LAST_TEXT_TOKEN = 3, 259  # byte tokens after the specials (pad, BOS, EOS)
SYNTHETIC_CLASSES = 4


def batch_spec(data_config, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of a batch of ``batch_size`` examples."""
    size, length = data_config.image_size, caption_length(data_config)
    return {
        "image": ((batch_size, size, size, 3), np.dtype(np.uint8)),
        "label": ((batch_size,), np.dtype(np.int32)),
        "caption_tokens": ((batch_size, length), np.dtype(np.int32)),
        "caption_mask": ((batch_size, length), np.dtype(np.int32)),
    }


def synthetic_batch(data_config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the layout with random content: pixels, labels, and captions of random lengths (at
    least BOS and EOS) whose padding is zero."""
    rng = np.random.default_rng(seed)
    spec = batch_spec(data_config, batch_size)
    (_, length), _ = spec["caption_mask"]
    lengths = rng.integers(min(4, length), max(length, 5), (batch_size, 1))
    mask = (np.arange(length)[None] < lengths).astype(np.int32)
    return {
        "image": rng.integers(0, 256, spec["image"][0], dtype=np.uint8),
        "label": rng.integers(0, SYNTHETIC_CLASSES, spec["label"][0]).astype(np.int32),
        "caption_tokens": (rng.integers(FIRST_TEXT_TOKEN, LAST_TEXT_TOKEN, (batch_size, length)) * mask
                           ).astype(np.int32),
        "caption_mask": mask,
    }
