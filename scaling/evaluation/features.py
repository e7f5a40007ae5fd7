"""Feature extraction: one jitted pass over a data split yields pooled features for every layer.

``map_split`` runs any jitted ``(params, images, rng) -> {name: [B, ...]}`` function over a split: the
objective's ``features`` (all layers at once) or a zero-shot classifier. It compiles once per batch
shape (the last, partial batch is padded to full size and the padding dropped again). Inputs are sharded
over the batch mesh axes like training batches; outputs are gathered to host numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable

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


def map_split(
    fn: BatchFn,
    params,
    data_config,
    split: str,
    *,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    max_examples: int | None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({name: [N, ...]}, labels [N]) of ``fn`` over the first ``max_examples`` of ``split`` (all if None).

    Every process reads the same examples, so the arrays are the same on every process.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    labels = []
    rng = jax.random.key(seed)
    batches = make_eval_iterator(data_config, split, batch_size=batch_size, max_examples=max_examples)
    for index, batch in enumerate(batches):
        count = batch["label"].shape[0]
        images = jax.device_put(pad_to(batch["image"], batch_size), batch_sharding(mesh, 4))
        out = fn(params, images, jax.random.fold_in(rng, index))
        for name, value in multihost_utils.process_allgather(out, tiled=True).items():
            chunks.setdefault(name, []).append(np.asarray(value[:count], np.float32))
        labels.append(batch["label"])
    if not labels:
        raise ValueError(f"split {split!r} of {data_config.name!r} yielded no examples")
    return {name: np.concatenate(parts) for name, parts in chunks.items()}, np.concatenate(labels)
