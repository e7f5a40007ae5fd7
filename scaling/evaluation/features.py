"""Feature extraction: one jitted pass over a data split yields pooled features for every layer.

``map_split`` runs any jitted ``(params, images, rng) -> {name: [B, ...]}`` function over a split's
batches: the objective's ``features`` (all layers at once) or a zero-shot classifier. It compiles once per
batch shape (the last, partial batch is padded to full size and the padding dropped again). Inputs are
sharded over the batch mesh axes like training batches; outputs are gathered to host numpy arrays.
``SplitImages`` reads a split's images and labels once and serves them to every later evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from scaling.data.pipeline import make_eval_iterator
from scaling.sharding import batch_sharding

BatchFn = Callable[[object, jax.Array, jax.Array], dict[str, jax.Array]]


def make_features_fn(objective, model_from_params) -> BatchFn:
    """Jitted (params, images, rng) -> {layer: [B, D]} for any objective."""
    return jax.jit(lambda params, images, rng: objective.features(model_from_params(params), images, rng))


def pad_to(array: np.ndarray, rows: int) -> np.ndarray:
    """Repeats the last row so that ``array`` has ``rows`` rows."""
    missing = rows - array.shape[0]
    return array if missing == 0 else np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


class SplitImages:
    """The images and labels of the first ``max_examples`` of a data set's splits, decoded once and held
    for every later pass (a run evaluates the same probe examples at each of its points), as long as a
    split's images fit in ``max_bytes``; a larger split is read again each time."""

    def __init__(self, data_config, *, batch_size: int, max_bytes: int = 2**30):
        self.data_config, self.batch_size, self.max_bytes = data_config, batch_size, max_bytes
        self.held: dict[tuple[str, int | None, int], list[dict[str, np.ndarray]]] = {}

    def batches(self, split: str, max_examples: int | None,
                per_class: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of the first ``max_examples`` of ``split``, or of ``per_class`` examples of each
        class (scaling.data.pipeline.per_class_indices)."""
        key = (split, max_examples, per_class)
        if key in self.held:
            yield from self.held[key]
            return
        kept: list[dict[str, np.ndarray]] | None = []
        size = 0
        for batch in make_eval_iterator(self.data_config, split, batch_size=self.batch_size,
                                        max_examples=max_examples, per_class=per_class):
            batch = {"image": batch["image"], "label": batch["label"]}
            size += batch["image"].nbytes
            kept = kept if kept is not None and size <= self.max_bytes else None
            if kept is not None:
                kept.append(batch)
            yield batch
        if not size:
            raise ValueError(f"split {split!r} of {self.data_config.name!r} yielded no examples")
        if kept is not None:
            self.held[key] = kept


def map_split(
    fn: BatchFn,
    params,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({name: [N, ...]}, labels [N]) of ``fn`` over ``batches`` (``image`` and ``label``, at most
    ``batch_size`` each): the split's examples in order, the same on every process."""
    chunks: dict[str, list[np.ndarray]] = {}
    labels = []
    rng = jax.random.key(seed)
    for index, batch in enumerate(batches):
        count = batch["label"].shape[0]
        images = jax.device_put(pad_to(batch["image"], batch_size), batch_sharding(mesh, 4))
        out = fn(params, images, jax.random.fold_in(rng, index))
        for name, value in multihost_utils.process_allgather(out, tiled=True).items():
            chunks.setdefault(name, []).append(np.asarray(value[:count], np.float32))
        labels.append(batch["label"])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}, np.concatenate(labels)
