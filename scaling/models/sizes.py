"""The size ladder: named transformer shapes from test-sized to pod-sized, and their parameter counts."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Size:
    width: int
    depth: int
    heads: int
    mlp: int


LADDER: dict[str, Size] = {
    "mu": Size(width=32, depth=2, heads=2, mlp=128),
    "micro": Size(width=64, depth=3, heads=4, mlp=256),
    "nano": Size(width=128, depth=4, heads=4, mlp=512),
    "ti": Size(width=192, depth=12, heads=3, mlp=768),
    "s": Size(width=384, depth=12, heads=6, mlp=1536),
    "m": Size(width=512, depth=8, heads=8, mlp=2048),
    "b": Size(width=768, depth=12, heads=12, mlp=3072),
    "l": Size(width=1024, depth=24, heads=16, mlp=4096),
    "h": Size(width=1280, depth=32, heads=16, mlp=5120),
    "g": Size(width=1408, depth=40, heads=16, mlp=6144),
    "G": Size(width=1664, depth=48, heads=16, mlp=8192),
}


def get_size(name: str) -> Size:
    """The size ``name`` of the ladder; ``name@N`` is that size cut to at most N blocks (``cut_to``)."""
    base, _, blocks = name.partition("@")
    if base not in LADDER or (blocks and not blocks.isdigit()):
        raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(LADDER)}")
    size = LADDER[base]
    return dataclasses.replace(size, depth=min(size.depth, int(blocks))) if blocks else size


def cut_to(name: str, blocks: int) -> str:
    """The name of size ``name`` with at most ``blocks`` blocks, e.g. ``"g@4"``: the planner ranks meshes on
    steps this shallow."""
    return f"{name.partition('@')[0]}@{blocks}"


def block_params(size: Size, cross_attention_width: int = 0) -> int:
    """Parameters of one pre-LN block (attention, optional cross-attention, MLP, norms, biases)."""
    w = size.width
    attention = 4 * w * w + 4 * w
    cross = (2 * w * w + 2 * cross_attention_width * w + 4 * w + 2 * w) if cross_attention_width else 0
    mlp = 2 * w * size.mlp + size.mlp + w
    norms = 2 * 2 * w
    return attention + cross + mlp + norms


def transformer_params(size: Size, cross_attention_width: int = 0) -> int:
    """Parameters of the block stack plus its final LayerNorm (embeddings and heads excluded)."""
    return size.depth * block_params(size, cross_attention_width) + 2 * size.width
