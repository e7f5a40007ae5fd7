import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import (
    first_step_rng,
    init_params,
    load_experiment,
    matmul_dtypes,
    random_batch,
    run_steps,
)

from scaling.models.layers import Attention, einsum
from scaling.models.sizes import LADDER, get_size, transformer_params
from scaling.models.transformer import Stacking, TextTower, Transformer, padded_cache
from scaling.objectives import OBJECTIVES
from scaling.sharding import make_mesh
from scaling.state import build_model_state


def test_bfloat16_einsum_uses_bfloat16_operands_forward_and_backward():
    a = jax.random.normal(jax.random.key(0), (4, 8, 16))
    b = jax.random.normal(jax.random.key(1), (16, 32))
    loss = lambda a, b, dtype: jnp.sum(jnp.sin(einsum("bld,df->blf", a, b, dtype)))
    grad = jax.grad(loss, argnums=(0, 1))
    # forward and both backward products: bfloat16 operands; on CPU every product returns float32 (XLA's
    # bfloat16-result products run below float32 speed there; TPU's: tests/test_plan.py)
    dtypes = matmul_dtypes(lambda a, b: grad(a, b, jnp.bfloat16), a, b)
    assert dtypes == [("bfloat16", "bfloat16", "float32")] * 3

    low, high = grad(a, b, jnp.bfloat16), grad(a, b, jnp.float32)
    for g_low, g_high in zip(low, high, strict=True):
        assert g_low.dtype == jnp.float32
        np.testing.assert_allclose(g_low, g_high, rtol=0.05, atol=0.05 * np.abs(g_high).max())


FLOAT32_MATMULS = {"clip": 3}  # CLIP's logits over the batch and their two gradients stay float32


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_bfloat16_matches_float32_for_every_objective(tiny_config, objective):
    """With model.dtype=bfloat16 every matmul of the training gradient multiplies bfloat16 operands (but
    those an objective keeps float32 on purpose), and the loss and gradients at init stay within 1% and
    5% of float32's, with the residual stream in float32 or in bfloat16 (model.residual_dtype; measured:
    at most 0.11% and 1.8% with a float32 stream, 0.15% and 2.3% with a bfloat16 one)."""
    config = tiny_config(objective, **{"data.image_size": 16})
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    batch = {key: jnp.asarray(value) for key, value in random_batch(config, 8).items()}
    flat = lambda grads: np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])

    def loss_and_grads(params, **model_fields):
        """The first step's loss and gradients (one jitted program) with ``model_fields`` set."""
        config.model.update(model_fields)
        state = build_model_state(config, mesh)
        loss = lambda p: state.objective.loss(state.model(p), batch, first_step_rng(config))[0]
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return state, float(value), flat(grads)

    with jax.set_mesh(mesh):
        params = init_params(build_model_state(config, mesh), config.seed)
        _, full_loss, full_grads = loss_and_grads(params)  # float32 parameters in every setting
        for residual_dtype in ("float32", "bfloat16"):
            state, loss, grads = loss_and_grads(params, dtype="bfloat16", residual_dtype=residual_dtype)
            assert loss == pytest.approx(full_loss, rel=0.01)
            assert np.linalg.norm(grads - full_grads) < 0.05 * np.linalg.norm(full_grads)

    loss = lambda p: state.objective.loss(state.model(p), batch, jax.random.key(0))[0]
    operand_dtypes = [dtypes[:2] for dtypes in matmul_dtypes(jax.grad(loss), params)]
    bfloat16 = [dtypes for dtypes in operand_dtypes if dtypes == ("bfloat16", "bfloat16")]
    assert len(bfloat16) >= 12 * get_size(config.size).depth  # >= 4 products a block, 2 gradients each
    assert len(operand_dtypes) - len(bfloat16) == FLOAT32_MATMULS.get(objective, 0)


def test_a_bfloat16_residual_stream_trains_as_a_float32_one(tiny_config):
    """Eight bfloat16 steps on one batch with the residual stream in bfloat16 (model.residual_dtype) bring
    the loss down as with it in float32 (3.0 to 0.009), every step's loss within 2% of float32's
    (measured: 0.01% at the first step, at most 1.3%)."""
    config = tiny_config("clip", **{"data.image_size": 16, "model.dtype": "bfloat16"})
    batch = random_batch(config, 8)
    one_device = {"data": 1, "fsdp": 1, "tensor": 1}
    curves = {}
    for residual_dtype in ("float32", "bfloat16"):
        config.model.residual_dtype = residual_dtype
        losses = np.array(run_steps(config, batch, jax.devices()[:1], one_device, 8)["losses"])
        assert losses[-1] < 0.1 * losses[0]
        curves[residual_dtype] = losses
    np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=0.02)


def test_attention_takes_a_context_only_when_built_for_one():
    x_BLD = jnp.ones((2, 3, 16))
    with pytest.raises(ValueError, match="self-attention layer; build it with context_width"):
        Attention(16, 2, dtype=jnp.float32, rngs=nnx.Rngs(0))(x_BLD, context_BMD=x_BLD)
    cross = Attention(16, 2, dtype=jnp.float32, rngs=nnx.Rngs(0), context_width=8)
    with pytest.raises(ValueError, match="cross-attention layer; pass context_BMD"):
        cross(x_BLD)
    assert cross(x_BLD, context_BMD=jnp.ones((2, 5, 8))).shape == (2, 3, 16)


@pytest.mark.parametrize("name", ["mu", "nano", "b", "g"])
def test_parameter_count_matches_the_ladder_formula(name):
    size = get_size(name)
    model = nnx.eval_shape(lambda: Transformer(size, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    counted = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    assert counted == transformer_params(size)


def test_ladder_spans_test_sized_to_pod_sized():
    counts = [transformer_params(size) for size in LADDER.values()]
    assert counts == sorted(counts)
    assert counts[0] < 100_000 and counts[-1] > 1_000_000_000


def test_causal_text_tower_never_looks_ahead():
    tower = TextTower(get_size("mu"), vocab=259, max_len=16, positions="learned",
                      dtype=jnp.float32, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 3, 259)
    changed = tokens.at[:, 10:].set(5)
    out, _ = tower(tokens)
    out_changed, _ = tower(changed)
    np.testing.assert_allclose(out[:, :10], out_changed[:, :10], atol=1e-6)
    assert not np.allclose(out[:, 10:], out_changed[:, 10:])


@pytest.mark.parametrize("scan", [False, True])
def test_a_continuation_of_a_cached_prefix_computes_what_the_whole_sequence_does(scan):
    size = get_size("mu")
    tower = TextTower(size, vocab=259, max_len=16, positions="learned", dtype=jnp.float32, rngs=nnx.Rngs(0),
                      cross_attention_width=size.width, stacking=Stacking(scan=scan))
    context_GMD = jax.random.normal(jax.random.key(1), (2, 6, size.width))
    prefix_GP = jax.random.randint(jax.random.key(2), (2, 7), 3, 259)
    rest_BL = jax.random.randint(jax.random.key(3), (6, 9), 3, 259)  # three continuations per prefix
    whole_BT = jnp.concatenate([jnp.repeat(prefix_GP, 3, axis=0), rest_BL], axis=1)
    out_BTD, _ = tower(whole_BT, jnp.repeat(context_GMD, 3, axis=0))
    prefix_GPD, past = tower.prefix(prefix_GP, context_GMD)
    np.testing.assert_allclose(prefix_GPD, out_BTD[::3, :7], atol=1e-5)
    np.testing.assert_allclose(tower.continue_prefix(rest_BL, past, context_GMD), out_BTD[:, 7:], atol=1e-5)
    cache = padded_cache(past, 16)  # and one token at a time, each written into a fixed-size cache
    for position in range(7, 16):
        out_G1D, cache = tower.decode(whole_BT[::3, position:position + 1], cache, jnp.int32(position),
                                      context_GMD)
        np.testing.assert_allclose(out_G1D[:, 0], out_BTD[::3, position], atol=1e-5)


def test_unknown_size_names_the_ladder():
    with pytest.raises(ValueError, match="choose one of mu, micro"):
        get_size("huge")


def test_remat_policies_leave_loss_and_gradients_unchanged():
    config = load_experiment("clip")
    batch = random_batch(config, 8)
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    runs = {}
    for policy in ("none", "full", "dots"):
        config.model.remat = policy
        runs[policy] = run_steps(config, batch, jax.devices()[:1], mesh, steps=0)
    flat = lambda tree: np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])
    for policy in ("full", "dots"):
        assert runs[policy]["first_loss"] == pytest.approx(runs["none"]["first_loss"], rel=1e-6)
        np.testing.assert_allclose(flat(runs[policy]["grads"]), flat(runs["none"]["grads"]), atol=1e-6)


def test_scanned_stack_computes_what_the_unrolled_one_does():
    size = get_size("mu")
    unrolled = Transformer(size, dtype=jnp.float32, rngs=nnx.Rngs(0))
    scanned = Transformer(size, dtype=jnp.float32, rngs=nnx.Rngs(1), stacking=Stacking(scan=True))
    blocks = nnx.to_pure_dict(nnx.state(unrolled.blocks))
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *[blocks[i] for i in range(size.depth)])
    nnx.update(scanned.blocks, stacked)
    kernel = scanned.blocks.mlp.up.kernel
    assert kernel.shape == (size.depth, size.width, size.mlp)
    assert kernel.get_metadata()["axes"] == ("layers", "embed", "mlp")

    x_BLD = jax.random.normal(jax.random.key(2), (2, 5, size.width))
    loss = lambda model: jnp.sum(jnp.sin(model(x_BLD)[0]))
    for reference, candidate in zip(unrolled(x_BLD)[1], scanned(x_BLD)[1], strict=True):
        np.testing.assert_allclose(candidate, reference, rtol=1e-5, atol=1e-5)
    # the loss sums 2 x 5 x width terms that largely cancel: compare it to one term's tolerance
    assert loss(scanned) == pytest.approx(float(loss(unrolled)), rel=1e-5, abs=1e-5)
    grads_unrolled = nnx.to_pure_dict(nnx.grad(loss)(unrolled)["blocks"])
    grads_scanned = nnx.to_pure_dict(nnx.grad(loss)(scanned)["blocks"])
    np.testing.assert_allclose(grads_scanned["mlp"]["up"]["kernel"][1],
                               grads_unrolled[1]["mlp"]["up"]["kernel"], rtol=1e-4, atol=1e-6)

