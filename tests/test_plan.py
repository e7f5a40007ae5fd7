import importlib.util
import math

import pytest

from scaling import plan
from scaling.config import ConfigError

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason='libtpu not installed (pip install -e ".[tpu]")'
)


@pytest.mark.parametrize(
    ("text", "grid", "name"),
    [("v5p-64", (2, 4, 4), "v5p-64"), ("v5p-8", (2, 2, 1), "v5p-8"), ("v5e-8", (2, 4), "v5e-8"),
     ("v5litepod-16", (4, 4), "v5e-16"), ("v5p:2x2x2", (2, 2, 2), "v5p-16"), ("v6e:4x4", (4, 4), "v6e-16")],
)
def test_slice_names_become_chip_grids(text, grid, name):
    topology = plan.parse_topology(text)
    assert topology.grid == grid
    assert topology.name == name


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
    meshes = plan.candidate_meshes(32, 1024, width=1408)
    assert {"data": 1, "fsdp": 32, "tensor": 1} in meshes
    assert {"data": 1, "fsdp": 8, "tensor": 4} in meshes  # tensor parallelism for the widest sizes
    assert all(m["data"] * m["fsdp"] * m["tensor"] == 32 for m in meshes)
    assert plan.candidate_meshes(32, 48, width=256) == []


def test_a_batch_no_candidate_mesh_divides_is_refused_before_compiling(tiny_config):
    config = tiny_config("clip", batch_size=48)
    with pytest.raises(ConfigError, match="batch_size 48 does not split over any candidate mesh of 32"):
        plan.choose_mesh(config, plan.parse_topology("v5p-64"), devices=[])


def test_a_mesh_search_stopped_part_way_resumes_at_the_candidate_it_was_on(tiny_config, tmp_path,
                                                                           monkeypatch):
    measured, stop_at = [], [1]

    def measure(config, topology, devices, cost_unless_fits=True):
        if len(measured) in stop_at:
            raise KeyboardInterrupt  # the session ends while this candidate compiles
        measured.append(mesh := ",".join(f"{a}={config.mesh[a]}" for a in plan.MESH_AXES))
        return {"mesh": mesh, "fits": True, "step_s": 1e-3 / config.mesh["fsdp"], "compile_s": 60.0}

    monkeypatch.setattr(plan, "measure", measure)
    monkeypatch.setattr(plan, "topology_devices", lambda topology: [])
    runs, topology = [("clip", tiny_config("clip", batch_size=64))], plan.parse_topology("v5p-64")
    with pytest.raises(KeyboardInterrupt):
        plan.plan_runs(runs, topology, tmp_path / "cache", progress=False)
    assert measured == ["data=1,fsdp=32,tensor=1"]

    stop_at.clear()
    (resumed,) = plan.plan_runs(runs, topology, tmp_path / "cache", progress=False)
    assert measured == ["data=1,fsdp=32,tensor=1", "data=4,fsdp=8,tensor=1", "data=32,fsdp=1,tensor=1"]
    (uninterrupted,) = plan.plan_runs(runs, topology, tmp_path / "fresh", progress=False)
    assert {**resumed, "cached": False} == {**uninterrupted, "cached": False}
    assert resumed["mesh"] == "data=1,fsdp=32,tensor=1" and resumed["compile_s"] == 3 * 60.0


@needs_libtpu
def test_plan_compiles_the_real_step_for_a_tpu_slice_and_caches_it(tiny_config, tmp_path, monkeypatch):
    config = tiny_config("igpt", **{"data.image_size": 8, "batch_size": 32, "total_steps": 500})
    topology = plan.parse_topology("v5e:2x2")
    mesh = {"data": 1, "fsdp": 4, "tensor": 1}
    longer = config.copy_and_resolve_references()
    longer.total_steps = 1000
    rows = plan.plan_runs([("short", config), ("long", longer)], topology, tmp_path, mesh, progress=False)

    short, long = rows
    assert short["mesh"] == "data=1,fsdp=4,tensor=1" and short["fits"]
    assert 0 < short["total_gib"] < short["hbm_gib"] == 16
    assert 0.8 < short["xla_over_analytic"] < 1.5  # the analytic count is XLA's within elementwise work
    assert short["step_s"] > 0 and short["compile_s"] > 0
    assert short["chip_hours"] == pytest.approx(500 * short["step_s"] * 4 / 3600)
    assert long["step_s"] == short["step_s"] and long["compile_s"] == 0  # one compile for both lengths
    assert long["chip_hours"] == pytest.approx(2 * short["chip_hours"])

    monkeypatch.setattr(plan, "topology_devices", lambda _: pytest.fail("compiled again"))
    again = plan.plan_runs([("short", config)], topology, tmp_path, mesh, progress=False)
    assert again[0]["cached"] and again[0]["step_s"] == short["step_s"]

    with pytest.raises(ConfigError, match="multiply to 3 but there are 4 devices"):
        plan.plan_runs([("other", config)], topology, tmp_path, {"data": 3, "fsdp": 1, "tensor": 1},
                       progress=False)


@needs_libtpu
def test_a_scanned_step_is_costed_as_the_unrolled_one(tiny_config):
    """XLA counts a loop body once and has no time for a loop: the planner costs a scanned step as the
    unrolled one, and reports the memory of the scanned program itself. Unrolled, with windowed einsums
    off, XLA's count is the analytic one within elementwise work."""
    config = tiny_config("clip", size="nano", **{"data.image_size": 8, "batch_size": 32})
    topology = plan.parse_topology("v5e:2x2")
    devices = plan.topology_devices(topology)
    layout = plan.with_layout(config, {"data": 1, "fsdp": 4, "tensor": 1}, "none")
    unrolled = plan.measure(layout, topology, devices)
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
    row = plan.measure(layout, topology, plan.topology_devices(topology), cost_unless_fits=False)
    assert not row["fits"] and row["temporaries_gib"] > row["hbm_gib"] == 16
    assert row["dominant"] == "temporaries (activations)" and math.isnan(row["step_s"])
    assert row["analytic_flops_per_step"] > 0
