"""The planner: TPU slice names, candidate meshes and the mesh search (on fake compiles), and real compiles
for a TPU slice from this CPU host (with libtpu)."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import pytest
from helpers import load_experiment, matmul_dtypes

from scaling import plan
from scaling.errors import ConfigError
from scaling.models.layers import einsum
from scaling.models.sizes import get_size
from scaling.sharding import make_mesh

# Compiled TPU programs live in this module's memory (each_step_compiled_once), not in the disk cache:
# its tests run on one xdist worker (``--dist loadgroup``), so each program compiles once per suite.
pytestmark = pytest.mark.xdist_group("tpu_compiles")

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason='libtpu not installed (pip install -e ".[tpu]")'
)


@pytest.fixture(scope="module", autouse=True)
def each_step_compiled_once():
    """Programs compiled for a TPU topology (no TPU client) cannot be read back from the persistent
    compilation cache, so this module keeps them in memory instead: a step the planner would compile
    again (same ``step_key``, same compiler options) is compiled once. {key: (compiled, model state)}."""
    compiled, compile_train_step = {}, plan.compile.compile_train_step

    def compile_once(config, devices, objective=None, compiler_options=None):
        key = (plan.runs.step_key(config), tuple(sorted((compiler_options or {}).items())))
        if key not in compiled:
            compiled[key] = compile_train_step(config, devices, objective, compiler_options)
        return compiled[key]

    jax.config.update("jax_enable_compilation_cache", False)
    with pytest.MonkeyPatch.context() as patch:
        for module in (plan, plan.compile):
            patch.setattr(module, "compile_train_step", compile_once)
        yield compiled
    jax.config.update("jax_enable_compilation_cache", True)


@pytest.mark.parametrize(
    ("text", "grid", "name"),
    [("v5p-64", (2, 4, 4), "v5p-64"), ("v5p-8", (2, 2, 1), "v5p-8"), ("v5e-8", (2, 4), "v5e-8"),
     ("v5litepod-16", (4, 4), "v5e-16"), ("v5p:2x2x2", (2, 2, 2), "v5p-16"), ("v6e:4x4", (4, 4), "v6e-16")],
)
def test_slice_names_become_chip_grids(text, grid, name):
    topology = plan.parse_topology(text)
    assert topology.grid == grid
    assert topology.name == name


@pytest.mark.parametrize(("text", "hosts"), [("v5p-8", 1), ("v5p-64", 8), ("v5e-8", 1), ("v5e-16", 4),
                                           ("v6e-256", 64), ("v4-32", 4)])
def test_a_slice_has_one_host_per_4_chips_beyond_a_single_host_slice(text, hosts):
    assert plan.parse_topology(text).hosts == hosts


def test_the_input_column_sets_what_each_run_needs_per_host_against_the_measured_rate():
    """Batch 256 in 0.1 s is 2,560 images/s, 320 per host of a v5p-64: 400 measured keep up with it, not with
    the same batch in 0.05 s; a step not costed (it does not fit) has no need."""
    config, topology = load_experiment("clip"), plan.parse_topology("v5p-64")
    config.batch_size = 256
    steps = {"fast": 0.05, "slow": 0.1, "too big": math.nan}
    measured = {"mesh": "data=32,fsdp=1,tensor=1", "remat": "none", "total_gib": 2.0, "dominant": "arguments",
                "xla_over_analytic": 1.0, "mfu": 0.5, "compile_s": 1.0, "mesh_reason": "fastest"}
    step = lambda step_s: {**measured, "step_s": step_s, "fits": not math.isnan(step_s)}
    rows = [{**plan.runs.run_row(run_id, config, topology, step(step_s)), "cached": False}
            for run_id, step_s in steps.items()]
    fast, slow, big = plan.with_input(rows, topology.hosts, 400.0)
    assert (slow["input_needed_per_host"], slow["input_ratio"], slow["input_keeps_up"]) == (320, 1.25, True)
    assert (fast["input_needed_per_host"], fast["input_ratio"], fast["input_keeps_up"]) == (640, 0.625, False)
    assert math.isnan(big["input_ratio"])
    assert plan.totals([fast, slow, big])["input_short"] == 1
    header, *lines = plan.table.format_table([fast, slow, big]).splitlines()
    assert header.split()[7:9] == ["ms/step", "img/s/host"] and "input/needed" in header
    assert "640" in lines[0] and "0.62 SHORT" in lines[0] and "1.25" in lines[1] and "SHORT" not in lines[1]
    assert "input" not in plan.table.format_table(rows)  # without a measured rate, no column


@pytest.mark.parametrize(
    ("text", "message"),
    [("v9-8", "generation one of v4, v5e, v5p, v6e"), ("v5p-12", "v5p-16"), ("v5e:4x4x4", "2 sides")],
)
def test_bad_topology_names_say_what_is_accepted(text, message):
    with pytest.raises(ConfigError, match=message):
        plan.parse_topology(text)


def test_bad_mesh_axis_names_the_axes():
    with pytest.raises(ConfigError, match="unknown axes \\['pipeline'\\]"):
        plan.parse_mesh("pipeline=2")
    assert plan.parse_mesh("data=2,fsdp=16") == {"data": 2, "fsdp": 16, "tensor": 1}


def test_missing_libtpu_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match='pip install -e ".\\[tpu\\]"'):
        plan.topology_devices(plan.parse_topology("v5e-4"))


def test_candidate_meshes_use_every_chip_and_divide_the_batch():
    meshes = plan.meshes.candidate_meshes(32, 1024, width=1408)
    assert {"data": 1, "fsdp": 32, "tensor": 1} in meshes
    assert {"data": 1, "fsdp": 8, "tensor": 4} in meshes  # tensor parallelism for the widest sizes
    assert all(m["data"] * m["fsdp"] * m["tensor"] == 32 for m in meshes)
    assert plan.meshes.candidate_meshes(32, 48, width=256) == []


def test_a_batch_no_candidate_mesh_divides_is_refused_before_compiling(tiny_config):
    config = tiny_config("clip", batch_size=48)
    with pytest.raises(ConfigError, match="batch_size 48 does not split over any candidate mesh of 32"):
        plan.choose_mesh(config, plan.parse_topology("v5p-64"), devices=[])


FSDP32, FSDP8, DATA32 = "data=1,fsdp=32,tensor=1", "data=4,fsdp=8,tensor=1", "data=32,fsdp=1,tensor=1"
# Step times (ms) the fake compiles give: FSDP over 32 chips is the fastest at 4 blocks, but within the
# ranking band of data x FSDP, which is the fastest at the whole depth; pure data parallelism is far behind.
SHALLOW_MS = {FSDP32: 1.0, FSDP8: 1.05, DATA32: 2.0}
WHOLE_MS = {FSDP32: 4.0, FSDP8: 3.8, DATA32: 8.0}


def fake_compiles(monkeypatch, fits=lambda config: True, stop_at=()):
    """Memory and cost measurements that record what was compiled instead of compiling. A compile
    numbered in ``stop_at`` is interrupted, as when a session ends."""
    compiled = []

    def record(what):
        if len(compiled) in stop_at:
            raise KeyboardInterrupt
        compiled.append(what)

    def memory_row(config, topology, devices):
        record(("memory", plan.mesh_name(config)))
        return {"mesh": plan.mesh_name(config), "fits": fits(config), "total_gib": 100 / config.mesh["fsdp"],
                "compile_s": 60.0}

    def cost_row(config, topology, devices, blocks=None):
        record(("cost", plan.mesh_name(config), blocks))
        ms = (WHOLE_MS if blocks is None else SHALLOW_MS)[plan.mesh_name(config)]
        return {"step_s": ms / 1e3, "compile_s": 60.0}

    for module in (plan, plan.runs):  # what the tests call, and what plan_runs calls
        monkeypatch.setattr(module, "memory_row", memory_row)
        monkeypatch.setattr(module, "cost_row", cost_row)
    monkeypatch.setattr(plan.runs, "topology_devices", lambda topology: [])
    return compiled


def test_a_mesh_search_costs_at_the_whole_depth_only_the_meshes_close_at_4_blocks(tiny_config,
                                                                                   monkeypatch):
    compiled = fake_compiles(monkeypatch)
    config, topology = tiny_config("clip", batch_size=64), plan.parse_topology("v5p-64")
    row = plan.choose_mesh(config, topology, [], memory=plan.memory_row, cost=plan.cost_row)

    shallow = plan.RANKING_BLOCKS
    assert compiled == [("memory", FSDP32), ("memory", FSDP8), ("memory", DATA32), ("cost", FSDP32, shallow),
                        ("cost", FSDP8, shallow), ("cost", DATA32, shallow), ("cost", FSDP32, None),
                        ("cost", FSDP8, None)]
    assert row["mesh"] == FSDP8 and row["step_s"] == WHOLE_MS[FSDP8] / 1e3  # settled at the whole depth
    assert row["compile_s"] == 8 * 60.0
    assert row["mesh_reason"] == (f"fastest of 3 that fit; {FSDP32} remat=none 4.0 ms; "
                                  f"slower at 4 blocks: {DATA32} remat=none +100%")


def test_a_lone_fit_is_costed_once_and_a_search_where_none_fits_is_not_costed(tiny_config, monkeypatch):
    compiled = fake_compiles(monkeypatch, fits=lambda config: config.model.remat == "full")
    config, topology = tiny_config("clip", batch_size=64), plan.parse_topology("v5p-64")
    given = {"data": 1, "fsdp": 32, "tensor": 1}
    row = plan.choose_mesh(config, topology, [], given, memory=plan.memory_row, cost=plan.cost_row)
    assert [what[0] for what in compiled] == ["memory"] * 3 + ["cost"]  # remat none, dots, full; one cost
    assert row["remat"] == "full" and row["mesh_reason"] == "the only one of 3 that fits"

    compiled.clear()
    row = plan.choose_mesh(config, topology, [], given, memory=lambda *args: {
        **plan.memory_row(*args), "fits": False}, cost=plan.cost_row)
    assert [what[0] for what in compiled] == ["memory"] * 3 and math.isnan(row["step_s"])
    assert row["mesh_reason"].startswith("none of 3 fit; least memory shown")


def test_a_mesh_search_stopped_part_way_resumes_at_the_compile_it_was_on(tiny_config, tmp_path, monkeypatch):
    compiled = fake_compiles(monkeypatch, stop_at=(1,))
    runs, topology = [("clip", tiny_config("clip", batch_size=64))], plan.parse_topology("v5p-64")
    with pytest.raises(KeyboardInterrupt):
        plan.plan_runs(runs, topology, tmp_path / "cache", progress=False)
    assert compiled == [("memory", FSDP32)]

    resumed_compiles = fake_compiles(monkeypatch)
    (resumed,) = plan.plan_runs(runs, topology, tmp_path / "cache", progress=False)
    assert ("memory", FSDP32) not in resumed_compiles and len(resumed_compiles) == 7
    (uninterrupted,) = plan.plan_runs(runs, topology, tmp_path / "fresh", progress=False)
    assert {**resumed, "cached": False} == {**uninterrupted, "cached": False}
    assert resumed["mesh"] == FSDP8 and resumed["compile_s"] == 8 * 60.0


def nano_igpt(tiny_config, **overrides):
    """The one config whose step the real compiles below share (4 blocks, a head that is not most of it)."""
    return tiny_config("igpt", size="nano", **{"data.image_size": 8, "batch_size": 32, **overrides})


@needs_libtpu
def test_plan_compiles_the_real_step_for_a_tpu_slice_and_caches_it(tiny_config, tmp_path, monkeypatch):
    config = nano_igpt(tiny_config, total_steps=500)
    topology = plan.parse_topology("v5e:2x2")
    mesh = {"data": 1, "fsdp": 4, "tensor": 1}
    longer = config.copy_and_resolve_references()
    longer.total_steps = 1000
    rows = plan.plan_runs([("short", config), ("long", longer)], topology, tmp_path, mesh, progress=False)

    short, long = rows
    assert short["mesh"] == "data=1,fsdp=4,tensor=1" and short["fits"]
    assert 0 < short["total_gib"] < short["hbm_gib"] == 16
    assert 0.8 < short["xla_over_analytic"] < 1.5  # the analytic count is XLA's within elementwise work
    assert 0 < short["mfu"] < 1  # the step's time is XLA's estimate: the chips' peak bounds it
    assert short["mfu"] == pytest.approx(
        short["analytic_flops_per_step"] / (short["step_s"] * 4 * plan.tpus.CHIPS["v5e"].peak_flops))
    assert short["chip_hours"] == pytest.approx(500 * short["step_s"] * 4 / 3600)
    assert long["step_s"] == short["step_s"] and long["compile_s"] == 0 < short["compile_s"]  # one compile
    assert long["chip_hours"] == pytest.approx(2 * short["chip_hours"])

    monkeypatch.setattr(plan.runs, "topology_devices", lambda _: pytest.fail("compiled again"))
    again = plan.plan_runs([("short", config)], topology, tmp_path, mesh, progress=False)
    assert again[0]["cached"] and again[0]["step_s"] == short["step_s"]

    with pytest.raises(ConfigError, match="multiply to 3 but there are 4 devices"):
        plan.plan_runs([("other", config)], topology, tmp_path, {"data": 3, "fsdp": 1, "tensor": 1},
                       progress=False)


@needs_libtpu
def test_on_tpu_both_gradients_of_a_bfloat16_product_leave_it_in_bfloat16():
    """Traced for TPU, the backward products return bfloat16 (on CPU float32: tests/test_models.py)."""
    mesh = make_mesh({"fsdp": -1}, plan.topology_devices(plan.parse_topology("v5e:2x2")))
    loss = lambda a, b: jnp.sum(jnp.sin(einsum("bld,df->blf", a, b, jnp.bfloat16)))
    a, b = jax.ShapeDtypeStruct((4, 8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 32), jnp.float32)
    with jax.set_mesh(mesh):
        dtypes = matmul_dtypes(jax.grad(loss, argnums=(0, 1)), a, b)
    assert dtypes == [("bfloat16", "bfloat16", "float32")] + [("bfloat16", "bfloat16", "bfloat16")] * 2


@needs_libtpu
def test_a_scanned_step_is_costed_as_the_unrolled_one(tiny_config):
    """XLA counts a loop body once and has no time for a loop: the planner costs a scanned step as the
    unrolled one, and reports the memory of the scanned program itself. Unrolled, with windowed einsums
    off, XLA's count is the analytic one within elementwise work."""
    topology = plan.parse_topology("v5e:2x2")
    devices = plan.topology_devices(topology)
    layout = plan.with_layout(nano_igpt(tiny_config), {"data": 1, "fsdp": 4, "tensor": 1}, "none")
    unrolled = plan.cost_row(layout, topology, devices)
    layout.model.scan_layers = True
    scanned = plan.measure(layout, topology, devices)
    compiled = plan.compile_train_step(layout, devices)[0]

    assert scanned["xla_flops_per_step"] == unrolled["xla_flops_per_step"]
    assert 0.95 < unrolled["xla_over_analytic"] < 1.1
    assert scanned["step_s"] == unrolled["step_s"]
    assert plan.step_cost(compiled)["flops"] * 4 < 0.6 * scanned["xla_flops_per_step"]  # one body counted
    assert scanned["temporaries_gib"] == compiled.memory_analysis().temp_size_in_bytes / plan.GIB


@needs_libtpu
def test_a_step_too_large_to_compile_is_reported_as_not_fitting(tiny_config):
    """XLA refuses to compile a step whose temporaries exceed the chip; the plan says it does not fit."""
    config = tiny_config("igpt", **{"data.image_size": 32, "batch_size": 16384})
    topology = plan.parse_topology("v5e:2x2")
    layout = plan.with_layout(config, {"data": 1, "fsdp": 4, "tensor": 1}, "none")
    row = plan.memory_row(layout, topology, plan.topology_devices(topology))
    assert not row["fits"] and row["temporaries_gib"] > row["hbm_gib"] == 16
    assert row["dominant"] == "temporaries (activations)"


@needs_libtpu
def test_a_ranking_cost_is_of_the_step_cut_to_fewer_blocks(tiny_config):
    """A mesh search ranks candidates on the step with every stack cut to a few blocks: fewer FLOPs by
    XLA's count and by ours, which still agree; the config and the size ladder are left whole."""
    topology = plan.parse_topology("v5e:2x2")
    devices = plan.topology_devices(topology)
    layout = plan.with_layout(nano_igpt(tiny_config), {"data": 1, "fsdp": 4, "tensor": 1}, "none")
    whole = plan.cost_row(layout, topology, devices)
    cut = plan.cost_row(layout, topology, devices, blocks=2)

    assert get_size("nano").depth == 4 and layout.size == "nano"
    assert plan.compile.with_depth(layout, 2).size == "nano@2" and get_size("nano@2").depth == 2
    assert cut["analytic_flops_per_step"] < 0.75 * whole["analytic_flops_per_step"]
    assert cut["xla_flops_per_step"] < 0.75 * whole["xla_flops_per_step"]
    assert 0.95 < cut["xla_over_analytic"] < 1.1 and 0.95 < whole["xla_over_analytic"] < 1.1
    assert 0 < cut["step_s"] < whole["step_s"]
