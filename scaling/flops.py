"""Analytic training-FLOP accounting, and the XLA cost-analysis cross-check.

FLOPs, not multiply-adds: a [m, k] x [k, n] matmul is 2*m*k*n. Training is forward x3 (the backward
pass does two matmuls per forward one). Attention score and value products are counted at full length
(a causal mask does not skip them). Elementwise work (norms, softmax, the optimizer) is left out.

These are the building blocks; each objective composes its own count from them in its
``train_flops_per_example``.
"""

from __future__ import annotations

from typing import Protocol

TRAIN_MULTIPLIER = 3


class Stack(Protocol):
    """A stack of transformer blocks (scaling.models.sizes.Size is one)."""

    width: int
    depth: int
    mlp: int


def dense(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def attention_products(q_len: int, kv_len: int, width: int) -> float:
    """Score (q.k) and value (p.v) products over all heads."""
    return 2 * 2.0 * q_len * kv_len * width


def block_forward(size: Stack, length: int, context_len: int = 0, context_width: int = 0) -> float:
    w = size.width
    flops = dense(length, w, 3 * w) + attention_products(length, length, w) + dense(length, w, w)
    flops += dense(length, w, size.mlp) + dense(length, size.mlp, w)
    if context_len:
        flops += dense(length, w, w) + dense(context_len, context_width, 2 * w)
        flops += attention_products(length, context_len, w) + dense(length, w, w)
    return flops


def transformer_forward(size: Stack, length: int, context_len: int = 0, context_width: int = 0):
    return size.depth * block_forward(size, length, context_len, context_width)


def patches(image_size: int, patch: int) -> int:
    return (image_size // patch) ** 2


def patch_embed_forward(image_size: int, patch: int, width: int) -> float:
    return dense(patches(image_size, patch), patch * patch * 3, width)


def image_tower_forward(size: Stack, image_size: int, patch: int) -> float:
    """Patch embedding and the transformer over every patch (a ViT without its head)."""
    return patch_embed_forward(image_size, patch, size.width) + transformer_forward(
        size, patches(image_size, patch))


def xla_flops(jitted, *args) -> float:
    """FLOPs XLA's cost analysis reports for one call of a jitted function on ``args``, counted on the
    program as lowered: no compile, which changes how the work is fused, not its matmuls."""
    cost = jitted.lower(*args).cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost["flops"])



