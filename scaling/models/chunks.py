"""Forward passes over a large batch in chunks: the same values per example, in passes whose activations
stay in cache.

An evaluation's batch (``eval.batch_size``, 256 by default) is larger than a device computes efficiently
without gradients: on a 2-core CPU host, four passes over 64 images took 0.53 to 0.84 of the time of one
pass over 256 at size mu and 0.68 to 0.92 at nano (``benchmarks/eval_chunks.py``, medians of interleaved
ratios, load average about 6; CLIP and captioning gain most, iGPT least). ``in_chunks`` runs a per-example
function over ``ROWS`` examples per device at a time (one ``lax.map``), each chunk taking every
``n``-th example so it stays sharded over the batch's mesh axes as the batch was.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from scaling.sharding import batch_shards

ROWS = 64
"""Examples per device in one pass (a chunk of 64 gives the very values of the whole batch on this CPU)."""


def in_chunks(fn: Callable[..., object], *arrays_B: jax.Array, rows: int | None = None):
    """``fn(*arrays_B)`` for a function whose every output row depends only on the same row of its
    inputs (leading axis B), computed ``rows`` (default ``ROWS``) examples per device at a time; the
    whole batch at once when it does not split into such chunks."""
    batch = arrays_B[0].shape[0]
    per_chunk = (rows or ROWS) * batch_shards(batch)
    count = batch // per_chunk
    if count <= 1 or batch % per_chunk:
        return fn(*arrays_B)

    def strided(x_B):  # chunk i holds rows i, i + count, i + 2 count, ...
        return x_B.reshape(per_chunk, count, *x_B.shape[1:]).swapaxes(0, 1)

    outputs = jax.lax.map(lambda chunk: fn(*chunk), tuple(strided(x) for x in arrays_B))
    return jax.tree.map(lambda y: y.swapaxes(0, 1).reshape(batch, *y.shape[2:]), outputs)
