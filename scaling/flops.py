"""Analytic training-FLOP accounting, and the XLA cost-analysis cross-check.

FLOPs, not multiply-adds: a [m, k] x [k, n] matmul is 2*m*k*n. Training is forward x3 (the backward
pass does two matmuls per forward one). Attention score and value products are counted at full length
(a causal mask does not skip them). Elementwise work (norms, softmax, the optimizer) is left out.
"""

from __future__ import annotations

from scaling.models.sizes import Size

TRAIN_MULTIPLIER = 3


def dense(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def attention_products(q_len: int, kv_len: int, width: int) -> float:
    """Score (q.k) and value (p.v) products over all heads."""
    return 2 * 2.0 * q_len * kv_len * width


def block_forward(size: Size, length: int, context_len: int = 0, context_width: int = 0) -> float:
    w = size.width
    flops = dense(length, w, 3 * w) + attention_products(length, length, w) + dense(length, w, w)
    flops += dense(length, w, size.mlp) + dense(length, size.mlp, w)
    if context_len:
        flops += dense(length, w, w) + dense(context_len, context_width, 2 * w)
        flops += attention_products(length, context_len, w) + dense(length, w, w)
    return flops


def transformer_forward(size: Size, length: int, context_len: int = 0, context_width: int = 0):
    return size.depth * block_forward(size, length, context_len, context_width)


def patch_embed_forward(image_size: int, patch: int, width: int) -> float:
    patches = (image_size // patch) ** 2
    return dense(patches, patch * patch * 3, width)


def clip_train_flops(
    image: Size, text: Size, *, image_size: int, patch: int, text_len: int, embed_dim: int,
    batch_size: int,
) -> float:
    """Both towers, both projections, and this example's row of the global similarity matrix."""
    patches = (image_size // patch) ** 2
    image_tower = patch_embed_forward(image_size, patch, image.width)
    image_tower += transformer_forward(image, patches) + dense(1, image.width, embed_dim)
    text_tower = transformer_forward(text, text_len) + dense(1, text.width, embed_dim)
    similarity = dense(1, embed_dim, batch_size)
    return TRAIN_MULTIPLIER * (image_tower + text_tower + similarity)


def captioning_train_flops(
    encoder: Size, decoder: Size, *, image_size: int, patch: int, text_len: int, vocab: int
) -> float:
    """Image encoder, then the decoder over text_len - 1 teacher-forced positions (self-attention,
    cross-attention with the K/V projections of every encoder token, MLP) and the vocabulary head."""
    patches = (image_size // patch) ** 2
    positions = text_len - 1
    image_encoder = patch_embed_forward(image_size, patch, encoder.width)
    image_encoder += transformer_forward(encoder, patches)
    text_decoder = transformer_forward(decoder, positions, patches, encoder.width)
    head = dense(positions, decoder.width, vocab)
    return TRAIN_MULTIPLIER * (image_encoder + text_decoder + head)


def diffusion_train_flops(
    size: Size, *, image_size: int, patch: int, frequency_dim: int, text: Size | None = None,
    text_len: int = 0,
) -> float:
    """DiT: patch embedding, the timestep MLP (sinusoids -> width -> width), the optional caption encoder
    and its projection, the transformer over patches with each block's adaLN-Zero modulation
    (width -> 6 * width, once per example), the final modulation (width -> 2 * width) and the
    un-patchify head."""
    patches = (image_size // patch) ** 2
    w = size.width
    forward = patch_embed_forward(image_size, patch, w) + transformer_forward(size, patches)
    forward += size.depth * dense(1, w, 6 * w) + dense(1, w, 2 * w)
    forward += dense(patches, w, patch * patch * 3)
    forward += dense(1, frequency_dim, w) + dense(1, w, w)
    if text is not None:
        forward += transformer_forward(text, text_len) + dense(1, text.width, w)
    return TRAIN_MULTIPLIER * forward


def igpt_train_flops(size: Size, *, image_size: int, palette_size: int) -> float:
    """Causal decoder over the full raster sequence of image_size**2 palette tokens (start token plus
    all but the last pixel) and the palette head; the embedding gather and the palette lookup (a few
    elementwise operations per pixel and colour) are left out."""
    length = image_size * image_size
    return TRAIN_MULTIPLIER * (transformer_forward(size, length) + dense(length, size.width, palette_size))


def xla_flops(jitted, *args) -> float:
    """FLOPs XLA's cost analysis reports for one call of a jitted function on ``args``."""
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost["flops"])



