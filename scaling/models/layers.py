"""Building blocks of the backbone: mixed-precision einsum, dense, norm, attention, MLP, blocks.

Parameters are float32 and carry logical axis names in their ``axes`` metadata (see scaling.sharding).
Every matmul goes through ``einsum``: with a bfloat16 compute dtype it multiplies bfloat16 operands with
float32 accumulation in the forward pass and in both backward products. Inside attention and MLP
blocks the products are returned in bfloat16 too (activations kept for the backward pass: half the
bytes), attention logits included; norms, the softmax (upcast inside its fusion), the blocks' output
projections (attention ``out``, MLP ``down``) and every head's output stay float32. The residual stream is
float32 or bfloat16 (``Stacking.residual_dtype``); each add into it is done in float32. On CPU biases are
added in float32 before the rounding to bfloat16, so their gradients are float32 sums: XLA's CPU backend
turns a bfloat16 sum over every token into a slow tree of windowed reductions (TPU sums it in one pass).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling.models.parametrization import INPUT, STANDARD, Parametrization, Scaling
from scaling.sharding import constrain, traced_platform

Array = jax.Array


# --- mixed-precision einsum ------------------------------------------------------------------------


def einsum(spec: str, a: Array, b: Array, dtype, out_dtype=jnp.float32) -> Array:
    """``jnp.einsum`` whose operands are cast to ``dtype`` and whose products accumulate in float32.

    The result has ``out_dtype`` (float32 when ``dtype`` is). For a bfloat16 ``dtype`` the backward
    products also take bfloat16 operands and return each operand's gradient in its own dtype. The
    gradient of ``b`` (a ``Dense`` weight) is rounded to ``dtype``, as that of a weight cast to bfloat16
    would be: with FSDP its partial sums are reduce-scattered in half the bytes. Where products can
    return bfloat16 (``bfloat16_results``), both gradients leave their products in ``dtype``, as those
    of operands cast to bfloat16 would: on TPU, ``a``'s gradient in bfloat16 rather than float32 rounded
    after took ViT-L/16's step from 171.0 to 166.2 ms and ViT-B/16's from 61.6 to 59.8 ms
    (``benchmarks/tpu_plan.py``).
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    return _low_precision_einsum(
        spec, dtype, jnp.dtype(out_dtype), jnp.dtype(a.dtype), jnp.dtype(b.dtype), a, b
    )


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _low_precision_einsum(spec, dtype, out_dtype, a_dtype, b_dtype, a, b):
    return _low_precision_einsum_fwd(spec, dtype, out_dtype, a_dtype, b_dtype, a, b)[0]


def _low_precision_einsum_fwd(spec, dtype, out_dtype, a_dtype, b_dtype, a, b):
    del a_dtype, b_dtype
    a_low, b_low = a.astype(dtype), b.astype(dtype)
    out = jnp.einsum(spec, a_low, b_low, preferred_element_type=jnp.float32).astype(out_dtype)
    return out, (a_low, b_low)


def _low_precision_einsum_bwd(spec, dtype, out_dtype, a_dtype, b_dtype, residuals, g):
    del out_dtype
    a_low, b_low = residuals
    inputs, out = spec.replace(" ", "").split("->")
    a_spec, b_spec = inputs.split(",")
    g_low = g.astype(dtype)
    product_type = dtype if bfloat16_results() else jnp.float32
    da = jnp.einsum(f"{out},{b_spec}->{a_spec}", g_low, b_low, preferred_element_type=product_type)
    db = jnp.einsum(f"{a_spec},{out}->{b_spec}", a_low, g_low, preferred_element_type=product_type)
    return da.astype(a_dtype), db.astype(dtype).astype(b_dtype)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def bfloat16_results() -> bool:
    """Whether a product of bfloat16 operands may return bfloat16. XLA's CPU runtime has no such kernel and
    runs it below float32 speed (a 1024 x 1024 product: 0.75x float32's rate, against 1.5x for the same
    product returning float32, rounded after), so on CPU products return float32; the rounded value is
    the same up to summation order (one element in 2,700 differs by one bfloat16 ulp)."""
    return traced_platform() != "cpu"


# --- parameters --------------------------------------------------------------------------------------


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
    """A float32 parameter tagged with logical axis names."""
    return nnx.Param(init(rngs.params(), shape, jnp.float32), axes=axes)


def zeros_param(shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.float32), axes=axes)


def flat_matmuls() -> bool:
    """Whether products must be flattened to plain 2-D and leading-batch matmuls: XLA's CPU runtime has
    no bfloat16 kernel for several contracting or free dimensions or for batch dimensions elsewhere.
    On TPU the flattening costs copies and layout changes, so products keep their natural shape."""
    return traced_platform() == "cpu"


class Dense(nnx.Module):
    """``x[..., in] -> x[..., out]`` with a weight of logical axes ``axes`` (in-axes then out-axes).

    On CPU the product runs as one [..., prod(in)] x [prod(in), prod(out)] matmul (see flat_matmuls).
    With ``fused`` true, several projections share the product: each slice of the first output axis is
    initialised as a Dense of its own would be (one draw each, in order), so a fused projection starts
    where its separate ones would. ``scaling`` (see scaling.models.parametrization) multiplies the initial
    standard deviation and tags the kernel with its learning-rate factor (``lr_scale`` metadata).
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        axes: tuple[str | None, ...],
        *,
        dtype,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        zero_init: bool = False,
        out_dtype=jnp.float32,
        fused: bool = False,
        scaling: Scaling = INPUT,
    ):
        fan_in = int(np.prod(in_shape))
        init = (
            nnx.initializers.zeros
            if zero_init
            else nnx.initializers.variance_scaling(scaling.init**2, "fan_in", "truncated_normal")
        )
        parts, part_shape = (out_shape[0], out_shape[1:]) if fused else (1, out_shape)
        draws = [init(rngs.params(), (fan_in, int(np.prod(part_shape))), jnp.float32).reshape(
            *in_shape, *part_shape) for _ in range(parts)]
        kernel = jnp.stack(draws, axis=len(in_shape)) if fused else draws[0]
        self.kernel = nnx.Param(kernel, axes=axes, lr_scale=scaling.lr)
        self.bias = zeros_param(out_shape, axes[len(in_shape) :]) if use_bias else None
        self.dtype, self.out_dtype = dtype, out_dtype
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def __call__(self, x: Array) -> Array:
        product_dtype = self.out_dtype if self.bias is None or bfloat16_results() else jnp.float32
        if flat_matmuls():
            lead = x.shape[: x.ndim - len(self.in_shape)]
            kernel_IO = self.kernel[...].reshape(int(np.prod(self.in_shape)), int(np.prod(self.out_shape)))
            y = einsum("...i,io->...o", x.reshape(*lead, -1), kernel_IO, self.dtype, product_dtype)
            y = y.reshape(*lead, *self.out_shape)
        else:
            ins, outs = "ijkl"[: len(self.in_shape)], "opqr"[: len(self.out_shape)]
            y = einsum(f"...{ins},{ins}{outs}->...{outs}", x, self.kernel[...], self.dtype, product_dtype)
        return y if self.bias is None else (y + self.bias[...].astype(y.dtype)).astype(self.out_dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last (``embed``) dimension, computed in float32."""

    def __init__(self, dim: int, *, use_scale: bool = True, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), axes=("embed",)) if use_scale else None
        self.bias = zeros_param((dim,), ("embed",)) if use_scale else None
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...] + self.bias[...]
        return y


# --- attention and MLP -------------------------------------------------------------------------------


KeysValues = tuple[Array, Array]  # self-attention keys and values [B, L, A, Q] of cached positions


def shared_rows(x_G: Array, rows: int) -> Array:
    """``x`` with each of its G rows serving ``rows // G`` consecutive rows of a batch of ``rows``: an image
    context or a cached prefix computed once for every continuation that reads it."""
    groups = x_G.shape[0]
    if rows % groups:
        raise ValueError(f"{groups} shared rows cannot serve a batch of {rows}")
    return x_G if groups == rows else jnp.repeat(x_G, rows // groups, axis=0)


class Attention(nnx.Module):
    """Multi-head attention; self-attention when ``context_width`` is None, cross-attention otherwise.

    Self-attention projects queries, keys and values with one fused matmul (``qkv``); cross-attention
    projects queries from ``x`` and keys and values from the context with one fused matmul
    (``key_value``). One product instead of three saves layout copies on TPU. Logits leave their matmul
    in the compute dtype and the softmax runs in float32 inside its fusion.
    """

    def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs, context_width: int | None = None,
                 parametrization: Parametrization = STANDARD):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        head_dim = width // heads
        projection = partial(Dense, dtype=dtype, rngs=rngs, out_dtype=dtype,
                             scaling=parametrization.hidden(width))
        if context_width is None:
            self.qkv = projection((width,), (3, heads, head_dim), ("embed", None, "heads", "kv"), fused=True)
            self.query = self.key_value = None
        else:
            self.qkv = None
            self.query = projection((width,), (heads, head_dim), ("embed", "heads", "kv"))
            self.key_value = projection((context_width,), (2, heads, head_dim),
                                        ("embed", None, "heads", "kv"), fused=True,
                                        scaling=parametrization.hidden(context_width))
        self.out = projection((heads, head_dim), (width,), ("heads", "kv", "embed"), out_dtype=jnp.float32)
        self.dtype = dtype
        self.scale = parametrization.attention_scale(head_dim, width)

    def project(self, x_BLD: Array, context_GMD: Array | None) -> tuple[Array, Array, Array]:
        """Queries [B, L, A, Q] of ``x``; keys and values [B, M, A, Q] of ``x`` or of the context. A
        context of G < B rows is projected once and shared (``shared_rows``)."""
        if self.qkv is not None:
            if context_GMD is not None:
                raise ValueError("this is a self-attention layer; build it with context_width to attend "
                                 "to a context")
            qkv_BL3AQ = self.qkv(x_BLD)
            return qkv_BL3AQ[:, :, 0], qkv_BL3AQ[:, :, 1], qkv_BL3AQ[:, :, 2]
        if context_GMD is None:
            raise ValueError("this is a cross-attention layer; pass context_BMD")
        kv_BM2AQ = shared_rows(self.key_value(context_GMD), x_BLD.shape[0])
        return self.query(x_BLD), kv_BM2AQ[:, :, 0], kv_BM2AQ[:, :, 1]

    def keys_values(self, x_BLD: Array) -> KeysValues:
        """Self-attention keys and values [B, L, A, Q] of ``x``: the cache a continuation attends to."""
        _, k_BLAQ, v_BLAQ = self.project(x_BLD, None)
        return k_BLAQ, v_BLAQ

    def __call__(self, x_BLD: Array, mask_BLM: Array | None = None, context_BMD: Array | None = None,
                 past: KeysValues | None = None):
        """``past``: keys and values [G, P, A, Q] of P earlier positions (G rows shared as in
        ``shared_rows``), attended before this call's own; ``mask_BLM`` then spans P + L keys."""
        q_BLAQ, k_BMAQ, v_BMAQ = self.project(x_BLD, context_BMD)
        if past is not None:
            batch = x_BLD.shape[0]
            k_BMAQ = jnp.concatenate([shared_rows(past[0], batch), k_BMAQ], axis=1)
            v_BMAQ = jnp.concatenate([shared_rows(past[1], batch), v_BMAQ], axis=1)
        q_BLAQ = q_BLAQ * self.scale
        if flat_matmuls():  # heads lead the length axes: plain batched matmuls
            heads_first = lambda x: x.transpose(0, 2, 1, 3)
            logits_BALM = einsum("bhlk,bhmk->bhlm", heads_first(q_BLAQ), heads_first(k_BMAQ), self.dtype,
                                 self.dtype)
        else:
            logits_BALM = einsum("blhk,bmhk->bhlm", q_BLAQ, k_BMAQ, self.dtype, self.dtype)
        logits_BALM = logits_BALM.astype(jnp.float32)
        if mask_BLM is not None:
            logits_BALM = jnp.where(mask_BLM[:, None], logits_BALM, jnp.finfo(jnp.float32).min)
        probs_BALM = jax.nn.softmax(logits_BALM, axis=-1).astype(self.dtype)
        if flat_matmuls():
            out_BALQ = einsum("bhlm,bhmk->bhlk", probs_BALM, heads_first(v_BMAQ), self.dtype, self.dtype)
            out_BLAQ = heads_first(out_BALQ)
        else:
            out_BLAQ = einsum("bhlm,bmhk->blhk", probs_BALM, v_BMAQ, self.dtype, self.dtype)
        return self.out(out_BLAQ)


class Mlp(nnx.Module):
    def __init__(self, width: int, hidden: int, *, dtype, rngs: nnx.Rngs,
                 parametrization: Parametrization = STANDARD):
        dense = partial(Dense, dtype=dtype, rngs=rngs, out_dtype=dtype, scaling=parametrization.hidden(width))
        self.up = dense((width,), (hidden,), ("embed", "mlp"))
        self.down = dense((hidden,), (width,), ("mlp", "embed"), out_dtype=jnp.float32)

    def __call__(self, x_BLD: Array) -> Array:
        return self.down(jax.nn.gelu(self.up(x_BLD)))


def modulate(x_BLD: Array, shift_BD: Array | None, scale_BD: Array | None) -> Array:
    """adaLN: ``x * (1 + scale) + shift`` per example; ``x`` itself when there is no modulation."""
    if shift_BD is None:
        return x_BLD
    return x_BLD * (1.0 + scale_BD[:, None]) + shift_BD[:, None]


def gate(y_BLD: Array, gate_BD: Array | None) -> Array:
    return y_BLD if gate_BD is None else gate_BD[:, None] * y_BLD


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: self-attention, optional cross-attention, MLP.

    With ``condition_width`` > 0 it is an adaLN-Zero block (Peebles & Xie 2023): a zero-initialised
    Dense maps SiLU(condition) to a shift, scale and gate for the attention and the MLP branch, and the
    two LayerNorms have no learned scale or bias, so the block starts as the identity.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp: int,
        *,
        dtype,
        rngs: nnx.Rngs,
        cross_attention_width: int | None = None,
        condition_width: int = 0,
        parametrization: Parametrization = STANDARD,
    ):
        conditioned = condition_width > 0
        self.modulation = (
            Dense((condition_width,), (6, width), ("embed", None, "modulation"), dtype=dtype, rngs=rngs,
                  zero_init=True, scaling=parametrization.hidden(condition_width))
            if conditioned else None
        )
        self.attention_norm = LayerNorm(width, use_scale=not conditioned)
        self.attention = Attention(width, heads, dtype=dtype, rngs=rngs, parametrization=parametrization)
        if cross_attention_width:
            self.cross_norm = LayerNorm(width)
            self.cross_attention = Attention(
                width, heads, dtype=dtype, rngs=rngs, context_width=cross_attention_width,
                parametrization=parametrization,
            )
        else:
            self.cross_norm = self.cross_attention = None
        self.mlp_norm = LayerNorm(width, use_scale=not conditioned)
        self.mlp = Mlp(width, mlp, dtype=dtype, rngs=rngs, parametrization=parametrization)

    def adaptive_parameters(self, condition_BE: Array | None) -> tuple[Array | None, ...]:
        """(attention shift, scale, gate, MLP shift, scale, gate), each [B, D]; all None unconditioned."""
        if self.modulation is None:
            return (None,) * 6
        if condition_BE is None:
            raise ValueError("this block is conditioned (condition_width > 0); pass condition_BE")
        params_B6D = self.modulation(jax.nn.silu(condition_BE))
        return tuple(params_B6D[:, i] for i in range(6))

    def keys_values(self, x_BLD: Array, condition_BE: Array | None = None) -> KeysValues:
        """The self-attention keys and values of this block for its input ``x``."""
        shift_a, scale_a, *_ = self.adaptive_parameters(condition_BE)
        return self.attention.keys_values(modulate(self.attention_norm(x_BLD), shift_a, scale_a))

    def __call__(
        self,
        x_BLD: Array,
        mask_BLL: Array | None = None,
        context_BMD: Array | None = None,
        condition_BE: Array | None = None,
        past: KeysValues | None = None,
    ):
        """The block's output, in ``x``'s dtype (the residual stream's): each branch is added in float32
        and the sum rounded once."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaptive_parameters(condition_BE)
        residual = lambda x_BLD, branch_BLD: (x_BLD.astype(jnp.float32) + branch_BLD).astype(x_BLD.dtype)
        attention_in_BLD = modulate(self.attention_norm(x_BLD), shift_a, scale_a)
        x_BLD = residual(x_BLD, gate(self.attention(attention_in_BLD, mask_BLL, past=past), gate_a))
        if self.cross_attention is not None:
            x_BLD = residual(x_BLD, self.cross_attention(self.cross_norm(x_BLD), None, context_BMD))
        x_BLD = residual(x_BLD, gate(self.mlp(modulate(self.mlp_norm(x_BLD), shift_m, scale_m)), gate_m))
        return constrain(x_BLD, ("batch", "length", "embed"))


# --- embeddings --------------------------------------------------------------------------------------


def sincos_positions(length: int, width: int) -> np.ndarray:
    """1-D sine-cosine position table [length, width] (2-D grids use it per axis)."""
    half = width // 2
    frequencies = 1.0 / (10_000 ** (np.arange(half) / half))
    angles = np.arange(length)[:, None] * frequencies[None]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(table, ((0, 0), (0, width - 2 * half))).astype(np.float32)


def sincos_positions_2d(grid: int, width: int) -> np.ndarray:
    """2-D sine-cosine table [grid*grid, width]: half the channels encode rows, half columns."""
    half = width // 2
    rows = np.repeat(sincos_positions(grid, half), grid, axis=0)
    cols = np.tile(sincos_positions(grid, width - half), (grid, 1))
    return np.concatenate([rows, cols], axis=1)


class Positions(nnx.Module):
    """Learned (initialised small) or fixed sine-cosine position embeddings added to ``x_BLD``."""

    def __init__(self, length: int, width: int, kind: str, *, rngs: nnx.Rngs, grid: bool = False):
        if kind == "learned":
            self.table = param(rngs, nnx.initializers.normal(0.02), (length, width), ("length", "embed"))
        elif kind == "sincos":
            self.table = None
        else:
            raise ValueError(f"unknown position embedding {kind!r}; use 'learned' or 'sincos'")
        self.length, self.grid = length, grid

    def __call__(self, x_BLD: Array, offset: int | Array = 0) -> Array:
        """``x`` plus the embeddings of positions ``offset`` to ``offset + L`` (a continuation of a
        cached prefix of ``offset`` positions, which may be traced; 1-D tables only), added in float32
        and returned in ``x``'s dtype."""
        _, length, width = x_BLD.shape
        if self.table is not None:
            table = self.table[...]
        elif self.grid:
            table = sincos_positions_2d(int(round(length**0.5)), width)
        else:
            table = sincos_positions(max(self.length, length), width)
        return (x_BLD + jax.lax.dynamic_slice_in_dim(table, offset, length)).astype(x_BLD.dtype)


class PatchEmbed(nnx.Module):
    """Splits [B, H, W, C] images into non-overlapping patches and projects each to ``width``."""

    def __init__(self, patch: int, channels: int, width: int, *, dtype, rngs: nnx.Rngs,
                 out_dtype=jnp.float32):
        self.patch = patch
        self.proj = Dense((patch * patch * channels,), (width,), (None, "embed"), dtype=dtype, rngs=rngs,
                          out_dtype=out_dtype)

    def __call__(self, images_BHWC: Array) -> Array:
        B, H, W, C = images_BHWC.shape
        p = self.patch
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by patch size {p}")
        patches = images_BHWC.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
        return self.proj(patches.reshape(B, (H // p) * (W // p), p * p * C))


class TokenEmbed(nnx.Module):
    """Token ids [B, L] -> [B, L, width]."""

    def __init__(self, vocab: int, width: int, *, rngs: nnx.Rngs):
        self.table = param(rngs, nnx.initializers.normal(0.02), (vocab, width), ("vocab", "embed"))

    def __call__(self, tokens_BL: Array) -> Array:
        table_VD = constrain(self.table[...], (None, None))  # gathered whole, as FSDP does for weights
        return jnp.take(table_VD, tokens_BL, axis=0)
