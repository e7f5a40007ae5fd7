"""Caption mixes: training captions whose detail level is drawn per example from configured proportions.

``data.caption_mix`` is a string such as ``"descriptive:0.95,short:0.05"`` (DALL-E 3's recipe): each
training example's caption comes from the level drawn for it, with the given probabilities. Empty means
every caption is at ``data.caption_level``. The draw is a pure function of (seed, process index, position
in the training stream), so the stream is the same on every rerun and a resumed iterator (grain state)
continues it exactly. Text sequences are as long as the longest level in the mix (no caption is cut).

Evaluation reads captions at one fixed level, ``eval.caption_level`` (default ``data.caption_level``),
whatever the training mix; the caption-level evaluation (``eval.caption_levels``) reads several.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from scaling.data.captions import longest_caption_tokens


def at_level(data_config, level: str):
    """A copy of the data section that reads every caption at ``level``, in sequences as long as the
    training ones (``max_caption_len`` pinned), so a model reads them as it was trained to."""
    data = data_config.copy_and_resolve_references()
    data.max_caption_len = data_config.max_caption_len or longest_caption_tokens(data_config)
    data.caption_level, data.caption_mix = level, ""
    return data


def eval_captions(config):
    """The data section of held-out batches: every caption at eval.caption_level (default
    data.caption_level), as long as the training ones."""
    return at_level(config.data, config.eval.caption_level or config.data.caption_level)


def draw_levels(stream: tuple[int, ...], indices: np.ndarray, proportions: tuple[float, ...]) -> np.ndarray:
    """[N] index into ``proportions`` for each position in ``indices`` of the training stream named by
    ``stream`` (seed, process index): one uniform draw per (stream, position) through the inverse of the
    cumulative proportions."""
    uniforms = np.array([np.random.default_rng([*stream, int(index)]).random() for index in indices])
    bounds = np.cumsum(proportions)
    return np.minimum(np.searchsorted(bounds, uniforms, side="right"), len(proportions) - 1)


@dataclasses.dataclass(frozen=True)
class MixedCaptions:
    """(stream position, record) -> example, with the caption at the level drawn for that position;
    ``transforms`` turn (record, draw key) into an example at each level, in the order of
    ``proportions``; the key (stream, position) also draws among several captions of one record."""

    transforms: tuple[Callable[[dict, tuple[int, ...]], dict], ...]
    proportions: tuple[float, ...]
    stream: tuple[int, ...]

    def __call__(self, index: int, record: dict) -> dict:
        draw = (*self.stream, index)
        if len(self.transforms) == 1:
            return self.transforms[0](record, draw)
        chosen = draw_levels(self.stream, np.asarray([index]), self.proportions)[0]
        return self.transforms[chosen](record, draw)
