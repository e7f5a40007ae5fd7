import jax
import pytest
from helpers import assert_meshes_agree, load_experiment, random_batch

from scaling.sharding import MeshError, logical_to_spec, resolve_mesh_shape


def test_mesh_fills_the_free_axis():
    assert resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {
        "data": 4, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("axes, message", [
    ({"data": 3, "fsdp": -1, "tensor": 1}, "do not divide the 8 devices"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "multiply to 4 but there are 8 devices"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one axis may be -1"),
])
def test_mesh_errors_name_the_problem(axes, message):
    with pytest.raises(MeshError, match=message):
        resolve_mesh_shape(axes, 8)


def test_rules_put_params_and_activations_on_different_axes():
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    assert logical_to_spec(("embed", "mlp"), (64, 256), mesh) == jax.P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "embed"), (8, 16, 64), mesh) == jax.P(
        ("data", "fsdp"), None, None)
    # A dimension the mesh axis does not divide stays whole instead of failing.
    assert logical_to_spec(("vocab", "embed"), (259, 64), mesh) == jax.P(None, "fsdp")


@pytest.mark.devices(8)
def test_eight_devices_match_one_device_and_really_shard():
    config = load_experiment("clip")
    batch = random_batch(config, 16)
    one, eight = assert_meshes_agree(config, batch, 8)
    assert one["losses"][-1] < one["losses"][0]

    kernel = eight["params"]["image"]["transformer"]["blocks"][0]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec == jax.P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
    adam_state = eight["opt_state"][1]  # (clip, adam, weight decay); the step applies the rate
    moment = adam_state.mu["image"]["transformer"]["blocks"][0]["mlp"]["up"]["kernel"]
    assert moment.sharding.spec == jax.P("fsdp", "tensor")
    total = sum(x.size for x in jax.tree.leaves(eight["params"]))
    per_device = sum(x.addressable_shards[0].data.size for x in jax.tree.leaves(eight["params"]))
    assert per_device < 0.6 * total

    config.model.scan_layers = True  # a scanned stack agrees too, its layer axis whole on every device
    _, eight = assert_meshes_agree(config, batch, 1)
    kernel = eight["params"]["image"]["transformer"]["blocks"]["mlp"]["up"]["kernel"]
    assert kernel.shape[0] == 2 and kernel.sharding.spec == jax.P(None, "fsdp", "tensor")
